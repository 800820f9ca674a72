// Plan: write the job file from the pipeline parameters and resolve it into plan.json
// (the resolved job with the paths as given + the tile grid) and the part plans (parts/hr.json,
// parts/<band>.json: what each later task gets, with the files it reads). One task per run; it reads
// only staged files.
process PLAN {
    tag "${task.ext.prefix ?: 'jointphot'}"
    label 'process_single'

    input:
    val job_json                                    // the job keys as JSON (one line), naming the staged input files
    val tiles                                       // --tiles: 'all', or ids and ranges
    path inputs, stageAs: 'inputs/in*/*'            // the job's input files
    path job_file, stageAs: 'job.json'              // the job with the paths as given: recorded in plan.json

    output:
    path 'plan.json'   , emit: plan
    path 'parts'       , emit: parts
    path 'tiles.json'  , emit: tiles                // the selected tile ids
    path 'job.json'    , emit: job, includeInputs: true
    path 'versions.yml', emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    """
    printf '%s\\n' ${Jointphot.shellQuote(job_json)} > staged_job.json
    jointphot plan staged_job.json -o plan.json --parts parts --as-given job.json ${task.ext.args ?: ''}
    jointphot select-tiles plan.json --tiles ${Jointphot.shellQuote(tiles as String)} -o tiles.json

    jointphot versions "${task.process}" > versions.yml
    """

    stub:
    def n = (params.stub_tiles ?: 4) as int
    def grid = (0..<n).collect { "{\"tile_id\": ${it}}" }.join(', ')
    def job = new groovy.json.JsonSlurper().parseText(job_json)
    def names = (job.lr_bands ?: [[lr_band: job.lr_band ?: 'lr']]).collect { it.lr_band }
    def bands = names.collect { "\"${it}\": {}" }.join(', ')
    def part = "{\"plans\": {\"cutout\": {\"tiles\": [${grid}]}, \"steps\": {\"tiles\": [${grid}]}}, \"inputs\": {\"cutout\": [], \"steps\": []}}"
    """
    printf '{"job": %s, "bands": {%s}, "tiles": [%s]}\\n' "\$(cat job.json)" '${bands}' '${grid}' > plan.json
    mkdir parts
    for name in hr ${names.join(' ')}; do printf '%s\\n' '${part}' > parts/\$name.json; done
    jointphot select-tiles plan.json --tiles ${Jointphot.shellQuote(tiles as String)} -o tiles.json
    printf '"%s":\\n    jointphot: stub\\n' '${task.process}' > versions.yml
    """
}
