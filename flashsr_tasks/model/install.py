"""The model stack's install, as the README gives it ("The GPU stack"): what a message about a
missing library tells the user to run. Free of torch: said where torch cannot be imported."""

MODEL_INSTALL = ("pip install torch==2.13.0 && pip install --no-deps polflashsr==0.0.2 && "
                 "pip install -e '.[model]'")
MODEL_INSTALL_HINT = f"install the model stack from the repository's folder: {MODEL_INSTALL}"
