"""DeepLiDARFlow in Flax (linen), one file per block of the paper's figure."""
