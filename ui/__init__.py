"""Shared Streamlit helpers and custom components for the dashboard pages."""
