"""``featviz optimize``: the picture each channel wants to see (feature visualisation by
optimisation, Olah et al., Distill 2017). :mod:`param` makes images from parameters,
:mod:`transforms` jitters them, :mod:`engine` optimises them, :mod:`export` writes them."""
