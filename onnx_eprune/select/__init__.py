"""Channel selection: the entropic method and the baselines it is measured against."""

# every --method; the first three rank from statistics, the last two from weights or at random
METHODS = ("entropic", "lasso", "thinet", "l1", "random")
DATA_METHODS = METHODS[:3]
