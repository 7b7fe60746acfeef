"""Standard-library helpers shared by the shipped packages; imports none of them.

Kept free of torch so that ``backend.models`` (run by install.py before torch exists) can use them.
"""
