"""Champion and challenger: which trained model each group serves, and why."""
