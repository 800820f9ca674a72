// Fit LR: forced photometry of one tile in one LR band with the HR models as priors.
process FIT_LR {
    tag "tile ${tile_id} ${band}"
    label 'process_medium'
    errorStrategy { Jointphot.tileErrorStrategy(task, params.max_retries as int, tile_id, band) }

    input:
    tuple val(tile_id), val(band), path(tile_files), val(broken)  // HR cutout, detections and fit + the band's cutout; broken: --fail_bands (testing only)
    path plan
    path inputs, stageAs: 'inputs/in*/*'            // PSF and astrometry files are read here

    output:
    tuple val(tile_id), val(band), path("t${Jointphot.nnnn(tile_id)}_${band}_*"), emit: tile   // tNNNN_<band>_fit.fits (the tile's catalogue with the band's columns), tNNNN_<band>_images.fits
    path 'versions.yml'                                                         , emit: versions

    script:
    def n = Jointphot.nnnn(tile_id)
    // broken (--fail_bands, testing only): a corrupt cutout of this band, so the real `jointphot fit-lr` fails
    def breakIt = broken ? "rm -f t${n}_${band}_cutout.fits && echo 'corrupted on purpose by --fail_bands (testing only)' > t${n}_${band}_cutout.fits" : ''
    """
    export OMP_NUM_THREADS=${task.cpus} OPENBLAS_NUM_THREADS=${task.cpus} MKL_NUM_THREADS=${task.cpus}
    ${breakIt}
    jointphot fit-lr ${plan} --tile ${tile_id} --band ${band} --dir . --engine ${params.engine}

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
    ${broken ? "echo 'jointphot: error: tile ${tile_id} band ${band} broken on purpose by --fail_bands (stub)' >&2; exit 1" : ''}
    touch t${n}_${band}_fit.fits t${n}_${band}_images.fits
    printf '"%s":\\n    jointphot: stub\\n' '${task.process}' > versions.yml
    """
}
