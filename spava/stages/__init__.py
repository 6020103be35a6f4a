"""spava.stages"""
