"""The discharge-record app (出院记录): notebook 05."""
