// Merge: one catalogue from the tile catalogues (overlap ownership by tile core); the tiles that
// failed are passed as --missing-tiles and recorded in the catalogue header.
process MERGE {
    tag "${params.out_prefix ?: 'jointphot'}"
    label 'process_single'

    input:
    path lr_fits, stageAs: 'tiles/*'                // the tiles' tNNNN_<band>_fit.fits
    path plan
    val missing_tiles                               // '' or '3,5'
    path inputs, stageAs: 'inputs/in*/*'

    output:
    path 'catalog.fits'           , emit: catalog
    path 'catalog*README*'        , emit: readme, optional: true
    path '*.{png,pdf}'            , emit: qa    , optional: true
    path 'versions.yml'           , emit: versions

    script:
    def missing = missing_tiles ? "--missing-tiles ${missing_tiles}" : ''
    """
    jointphot merge ${plan} -o catalog.fits ${missing} ${lr_fits}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        jointphot: \$(jointphot --version 2>&1 | sed 's/^.*version //')
    END_VERSIONS
    python3 -c 'import platform, numpy, scipy, astropy
    for k, v in (("python", platform.python_version()), ("numpy", numpy.__version__), ("scipy", scipy.__version__), ("astropy", astropy.__version__)): print("    %s: %s" % (k, v))' >> versions.yml || true
    """

    stub:
    """
    echo "stub catalogue; missing tiles: ${missing_tiles ?: 'none'}" > catalog.fits
    printf '"%s":\\n    jointphot: stub\\n' '${task.process}' > versions.yml
    """
}
