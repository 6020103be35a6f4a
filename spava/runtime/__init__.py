"""spava.runtime"""
