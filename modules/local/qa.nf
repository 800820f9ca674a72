// QA: the pictures of `jointphot qa` (per tile: HR and LR data / model / residual with the
// detections; for the run: tile map by status, LR vs HR magnitude, errors, residual statistics,
// summary.html). A failure here (e.g. no matplotlib) costs no result: it is a warning.
process QA {
    tag "${task.ext.prefix ?: 'jointphot'}"
    label 'process_single'

    input:
    path tile_files, stageAs: 'staged/*'            // every file of the finished tiles (tNNNN_*)
    path catalog                                    // the merged catalogue
    path plan

    output:
    path 'qa/*'        , emit: qa, optional: true
    path 'versions.yml', emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    """
    # `jointphot qa` reads the tiles from <workdir>/tiles/NNNN: lay the staged files out so, with --workdir .
    for f in staged/t[0-9][0-9][0-9][0-9]_*; do
        b=\$(basename "\$f"); mkdir -p "tiles/\${b:1:4}"; ln -s "../../\$f" "tiles/\${b:1:4}/\$b"
    done

    jointphot qa ${plan} --workdir . -o qa --jobs ${task.cpus} \\
        || echo "WARNING: jointphot qa failed (exit \$?): no QA pictures; the catalogue is not affected" >&2

    jointphot versions "${task.process}" --tool matplotlib > versions.yml
    """

    stub:
    """
    mkdir -p qa && touch qa/summary.html
    printf '"%s":\\n    jointphot: stub\\n' '${task.process}' > versions.yml
    """
}
