// Detect: SExtractor on the HR cutout of one tile.
process DETECT {
    tag "tile ${tile_id}"
    label 'process_low'
    errorStrategy { Jointphot.tileErrorStrategy(task, params.max_retries as int, tile_id) }

    input:
    tuple val(tile_id), path(tile_files)            // the tile's cutouts
    path plan
    path inputs, stageAs: 'inputs/in*/*'            // sexinputdir (if any) must be visible

    output:
    tuple val(tile_id), path("t${Jointphot.nnnn(tile_id)}_*"), emit: tile   // tNNNN_hr_detections.fits
    path 'versions.yml'                                      , emit: versions

    script:
    """
    export OMP_NUM_THREADS=${task.cpus} OPENBLAS_NUM_THREADS=${task.cpus} MKL_NUM_THREADS=${task.cpus}
    jointphot detect ${plan} --tile ${tile_id} --dir .

    sex=\$(command -v source-extractor || command -v sex || command -v sextractor || true)
    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        jointphot: \$(jointphot --version 2>&1 | sed 's/^.*version //')
        source-extractor: \$(\${sex:-false} --version 2>&1 | sed -n 's/^.*[Vv]ersion \\([0-9][0-9.]*\\).*/\\1/p' | head -n1)
    END_VERSIONS
    python3 -c 'import platform, numpy, scipy, astropy
    for k, v in (("python", platform.python_version()), ("numpy", numpy.__version__), ("scipy", scipy.__version__), ("astropy", astropy.__version__)): print("    %s: %s" % (k, v))' >> versions.yml || true
    """

    stub:
    def n = Jointphot.nnnn(tile_id)
    """
    touch t${n}_hr_detections.fits
    printf '"%s":\\n    jointphot: stub\\n' '${task.process}' > versions.yml
    """
}
