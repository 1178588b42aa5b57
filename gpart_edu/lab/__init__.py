"""The lab: measuring the maps theta -> Delta W and the loss in theta-space.

    maps                flatten, as_map, linearise (J v and J^T u): what every measurement shares
    geometry            Gram residuals, group sizes, distance ratios, LoRA's symmetries (notebooks 01, 02)
    jacobian            singular values of J, dense or matrix-free; the projected-step identity (notebook 02)
    eigen               the one Lanczos / ARPACK helper behind spectra and curvature
    random_projections  Gaussian and Fastfood projections to compare with the partition (notebook 01)
    landscape           L(theta) on lines and planes, never mutating the model (notebook 03)
    curvature           Hessian-vector products, top eigenvalues, spectral density (notebook 03)
    intrinsic           training inside a random subspace, d90 (notebook 04)
    toys                problems with known answers: teacher-student regression, an MLP (notebook 04)
    verify              the isometry checks behind ``gpart-edu verify`` (notebook 06)
    peft_maps           theta -> Delta W of peft's tuners, checked against peft's merge (notebook 08)
    audit               the isometry audit of any PEFT method behind ``gpart-edu audit`` (notebook 08)

The lab uses the core and never the fine-tuning wing.
"""
