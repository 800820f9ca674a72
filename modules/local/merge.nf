// Merge: one catalogue from the tile catalogues (overlap ownership by tile core); the tiles that
// failed are passed as --missing-tiles and recorded in the catalogue header.
process MERGE {
    tag "${task.ext.prefix ?: 'jointphot'}"
    label 'process_single'

    input:
    path lr_fits, stageAs: 'tiles/*'                // the tiles' tNNNN_<band>_fit.fits
    path plan
    val missing_tiles                               // '' or '3,5'

    output:
    path 'catalog.fits'           , emit: catalog
    path 'catalog*README*'        , emit: readme, optional: true
    path 'versions.yml'           , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def missing = missing_tiles ? "--missing-tiles ${missing_tiles}" : ''
    """
    jointphot merge ${plan} -o catalog.fits ${missing} ${task.ext.args ?: ''} ${lr_fits}

    jointphot versions "${task.process}" > versions.yml
    """

    stub:
    """
    echo "stub catalogue; missing tiles: ${missing_tiles ?: 'none'}" > catalog.fits
    printf '"%s":\\n    jointphot: stub\\n' '${task.process}' > versions.yml
    """
}
