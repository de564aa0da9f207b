"""The run machinery above the steps: notebooks through papermill, sweeps, executors, kernels, environment set-up."""
