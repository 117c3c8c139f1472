"""This project's models."""
