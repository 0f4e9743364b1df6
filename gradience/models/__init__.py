"""gradience.models"""
