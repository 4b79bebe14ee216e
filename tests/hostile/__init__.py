"""Attacks on a real mesh (the hardening issue): each test fails on the code before its fix."""
