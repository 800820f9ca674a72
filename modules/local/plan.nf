// Plan: write the job file from the pipeline parameters and resolve it into plan.json
// (the resolved job with absolute paths + the tile grid). One task per run.
process PLAN {
    tag "${task.ext.prefix ?: 'jointphot'}"
    label 'process_single'

    input:
    val job_json                                    // the job keys as JSON (one line)
    path inputs, stageAs: 'inputs/in*/*'            // the job's input files: staged so that container engines mount them

    output:
    path 'plan.json'   , emit: plan
    path 'job.json'    , emit: job
    path 'versions.yml', emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def quoted = job_json.replace("'", "'\\''")
    """
    printf '%s\\n' '${quoted}' > job.json
    jointphot plan job.json -o plan.json ${task.ext.args ?: ''}

    jointphot versions "${task.process}" > versions.yml
    """

    stub:
    def quoted = job_json.replace("'", "'\\''")
    def n = (params.stub_tiles ?: 4) as int
    def tiles = (0..<n).collect { "{\"tile_id\": ${it}}" }.join(', ')
    def job = new groovy.json.JsonSlurper().parseText(job_json)
    def bands = (job.lr_bands ?: [[lr_band: job.lr_band ?: 'lr']]).collect { "\"${it.lr_band}\": {}" }.join(', ')
    """
    printf '%s\\n' '${quoted}' > job.json
    printf '{"job": %s, "bands": {%s}, "tiles": [%s]}\\n' "\$(cat job.json)" '${bands}' '${tiles}' > plan.json
    printf '"%s":\\n    jointphot: stub\\n' '${task.process}' > versions.yml
    """
}
