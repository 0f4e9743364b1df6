"""gradience.train"""
