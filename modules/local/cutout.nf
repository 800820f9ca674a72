// Cutout: the HR cutout and one cutout per LR band of one tile (padded region) from the large images.
process CUTOUT {
    tag "tile ${tile_id}"
    label 'process_low'
    errorStrategy { Jointphot.tileErrorStrategy(task, params.max_retries as int, tile_id) }

    input:
    val tile_id
    path plan
    path inputs, stageAs: 'inputs/in*/*'            // the large images are read here (absolute paths in plan.json)

    output:
    tuple val(tile_id), path("t${Jointphot.nnnn(tile_id)}_*"), emit: tile   // tNNNN_hr_cutout.fits, tNNNN_<band>_cutout.fits
    path 'versions.yml'                                      , emit: versions

    script:
    """
    export OMP_NUM_THREADS=${task.cpus} OPENBLAS_NUM_THREADS=${task.cpus} MKL_NUM_THREADS=${task.cpus}
    jointphot cutout ${plan} --tile ${tile_id} --dir .

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
    touch t${n}_hr_cutout.fits
    printf '"%s":\\n    jointphot: stub\\n' '${task.process}' > versions.yml
    """
}
