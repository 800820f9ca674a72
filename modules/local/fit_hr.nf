// Fit HR: model fit of the HR detections of one tile (the priors for the LR fit).
process FIT_HR {
    tag "tile ${tile_id}"
    label 'process_medium'
    errorStrategy { Jointphot.tileErrorStrategy(task, params.max_retries as int, tile_id) }

    input:
    tuple val(tile_id), path(tile_files), val(broken)   // cutouts + detections; broken: --fail_tiles (testing only)
    path plan
    path inputs, stageAs: 'inputs/in*/*'            // PSF and astrometry files are read here

    output:
    tuple val(tile_id), path("t${Jointphot.nnnn(tile_id)}_*"), emit: tile   // tNNNN_hr_fit.fits, tNNNN_hr_images.fits
    path 'versions.yml'                                      , emit: versions

    script:
    def n = Jointphot.nnnn(tile_id)
    // broken (--fail_tiles, testing only): give this tile a corrupt detection catalogue, so that the
    // real `jointphot fit-hr` fails on it (the staged link is replaced; the original file is untouched).
    // It is an input, not a params lookup, so that only the broken tile's task hash changes.
    def breakIt = broken ? "rm -f t${n}_hr_detections.fits && echo 'corrupted on purpose by --fail_tiles (testing only)' > t${n}_hr_detections.fits" : ''
    """
    export OMP_NUM_THREADS=${task.cpus} OPENBLAS_NUM_THREADS=${task.cpus} MKL_NUM_THREADS=${task.cpus}
    ${breakIt}
    jointphot fit-hr ${plan} --tile ${tile_id} --dir . --engine ${params.engine}

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
    ${broken ? "echo 'jointphot: error: tile ${tile_id} broken on purpose by --fail_tiles (stub)' >&2; exit 1" : ''}
    touch t${n}_hr_fit.fits t${n}_hr_images.fits
    printf '"%s":\\n    jointphot: stub\\n' '${task.process}' > versions.yml
    """
}
