// Fit LR: forced photometry of one tile on the LR image with the HR models as priors.
process FIT_LR {
    tag "tile ${tile_id}"
    label 'process_medium'
    errorStrategy { Jointphot.tileErrorStrategy(task, params.max_retries as int, tile_id) }

    input:
    tuple val(tile_id), path(tile_files)            // cutouts + detections + HR fit
    path plan
    path inputs, stageAs: 'inputs/in*/*'            // PSF and astrometry files are read here

    output:
    tuple val(tile_id), path("t${Jointphot.nnnn(tile_id)}_*"), emit: tile   // tNNNN_lr_fit.fits (the tile's catalogue), tNNNN_lr_images.fits
    path 'versions.yml'                                      , emit: versions

    script:
    """
    export OMP_NUM_THREADS=${task.cpus} OPENBLAS_NUM_THREADS=${task.cpus} MKL_NUM_THREADS=${task.cpus}
    jointphot fit-lr ${plan} --tile ${tile_id} --dir . --engine ${params.engine}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        jointphot: \$(jointphot --version 2>&1 | sed 's/^.*version //')
    END_VERSIONS
    python3 -c 'import platform, numpy, scipy, astropy
    for k, v in (("python", platform.python_version()), ("numpy", numpy.__version__), ("scipy", scipy.__version__), ("astropy", astropy.__version__)): print("    %s: %s" % (k, v))' >> versions.yml || true
    """

    stub:
    def n = Jointphot.nnnn(tile_id)
    """
    touch t${n}_lr_fit.fits t${n}_lr_images.fits
    printf '"%s":\\n    jointphot: stub\\n' '${task.process}' > versions.yml
    """
}
