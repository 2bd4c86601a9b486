"""Training-side noise schedules: timesteps, noising, regression targets."""
