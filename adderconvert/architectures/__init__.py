"""The architectures a model is rebuilt from: torchvision's CNNs (:mod:`.cnn`) and the official AdderNets
(:mod:`.official`)."""
