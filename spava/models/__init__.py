"""spava.models"""
