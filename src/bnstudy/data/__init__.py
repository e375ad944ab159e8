"""Stage 1, the data (`prepare_data` and `install_data`, one job each per dataset): a dataset config -> one tensor file.

Takes a `datasets.<name>` config block (image folders, torchvision sources, the embedded synthetic
data, the deep linear network's Gaussian samples); gives results/data/<name>.pt, the uint8 images
and labels (or x and A x) that training and the analyses load whole onto the device
(`datasets.prepare`, `datasets.load_prepared`), and the batches drawn from them there
(`batches`: seeded samplers, per-step generators, augmentation in batch).

This file imports nothing, so importing the package stays light (torch loads with the modules).
"""
