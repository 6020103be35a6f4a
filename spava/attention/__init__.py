"""spava.attention"""
