# Start JupyterLab with `jupyter lab --config=jupyter_server_config.py` (README, JupyterLab): the
# notebooks under notebooks/ are saved without their outputs, so running them leaves the tracked
# files unchanged (workbench.nbclean). Other notebooks are saved as they are.
from workbench.nbclean import strip_tracked_outputs

c = get_config()  # noqa: F821 - provided by Jupyter when it loads this file
c.FileContentsManager.pre_save_hook = strip_tracked_outputs
