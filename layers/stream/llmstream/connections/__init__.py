"""The connections table that $connect and $disconnect keep."""
