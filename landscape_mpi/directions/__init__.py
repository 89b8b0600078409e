"""Directions in weight space and the setting of theta* + sum c_i d_i; where directions come from."""
