"""Video: CVRL contrastive video representation learning (Qian et al. 2021), video sources and splits,
temporally consistent clip augmentation, video ResNets, and moving-sprite videos. See docs/video.md."""
