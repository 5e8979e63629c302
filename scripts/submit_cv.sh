#!/usr/bin/env bash
# Submit a whole braintseg cross-validation to Slurm as four dependent jobs:
#   prepare (CPU) -> train (job array: folds x views, one GPU each) -> predict (out-of-fold
#   ensemble of each fold's views) -> evaluate (CPU; Dice/HD95 per case -> CV_DIR/metrics.csv)
# Each job starts only when the previous one succeeded (--dependency=afterok).  A train task
# that requeues itself at its walltime is not "finished" for afterok: predict waits until the
# requeued task completes (a failed task leaves predict pending with DependencyNeverSatisfied).
#
# Usage:
#   scripts/submit_cv.sh -d BRATS_ROOT -o CV_DIR [options] [-- extra sbatch options for all jobs]
# Options:
#   -d, --data DIR        BraTS root (case folders anywhere below it); also the evaluation truth
#   -o, --out DIR         CV folder: store.h5, runs/<view>_f<fold>/, predictions/, metrics.csv,
#                         logs/ (one Slurm log per job / array task)
#   -c, --config FILE     YAML config for every step
#   -s, --set KEY=VALUE   config override (repeatable; no spaces in values)
#   -f, --folds N         number of folds [5]
#   -v, --views "V ..."   views to train, e.g. "axial sagittal coronal" [axial]
#   -i, --image FILE      Singularity/Apptainer image (jobs run `singularity exec --nv`)
#   -b, --bind LIST       container bind paths, e.g. "/scratch,/data" (with --image)
#   -p, --partition NAME  partition for all jobs
#   -g, --gpu-partition NAME  partition for train and predict (overrides --partition there)
#   -A, --account NAME    account for all jobs
#       --max-parallel N  at most N train tasks at once (--array=...%N)
#       --cpu             no GPUs: train and predict get --gres=none (CPU-only clusters, tests)
#       --gpus G          GPUs per node for each train task [1]: G > 1 trains one fold on G GPUs
#                         (one process per GPU, JAX backend, train.distribution=data_parallel;
#                         train.batch_size is the global batch: a multiple of G x nodes)
#       --nodes M         nodes per train task [1] (with --gpus: M x G processes)
#       --predict-shards K  predict and evaluate as arrays of K tasks (--shard k/K), each
#                         case in one task; evaluate merges the shards at the end [1]
#   -n, --dry-run         print the sbatch commands instead of submitting
# Per-step sbatch options (words, e.g. "--time=48:00:00 --mem=64G"): the environment variables
# PREPARE_OPTS, TRAIN_OPTS, PREDICT_OPTS, EVALUATE_OPTS.
# Prints one line per job: "<step> <job id>".
set -euo pipefail

die() { echo "submit_cv: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SLURM_DIR=$(cd "${SLURM_DIR:-$here/../slurm}" && pwd)
data="" out="" config="" folds=5 views="axial" image="" bind="" partition="" gpu_partition=""
account="" max_parallel="" cpu=0 dry=0 sets=() common=() gpus=1 nodes=1 shards=1
while (($#)); do
    case $1 in
        -d | --data) data=${2:?}; shift ;;
        -o | --out) out=${2:?}; shift ;;
        -c | --config) config=${2:?}; shift ;;
        -s | --set) sets+=("${2:?}"); shift ;;
        -f | --folds) folds=${2:?}; shift ;;
        -v | --views) views=${2:?}; shift ;;
        -i | --image) image=${2:?}; shift ;;
        -b | --bind) bind=${2:?}; shift ;;
        -p | --partition) partition=${2:?}; shift ;;
        -g | --gpu-partition) gpu_partition=${2:?}; shift ;;
        -A | --account) account=${2:?}; shift ;;
        --max-parallel) max_parallel=${2:?}; shift ;;
        --cpu) cpu=1 ;;
        --gpus) gpus=${2:?}; shift ;;
        --nodes) nodes=${2:?}; shift ;;
        --predict-shards) shards=${2:?}; shift ;;
        -n | --dry-run) dry=1 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; common+=("$@"); break ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done
[[ -n $data ]] || die "missing -d BRATS_ROOT (see --help)"
[[ -n $out ]] || die "missing -o CV_DIR (see --help)"
[[ -d $data ]] || die "data folder $data does not exist"
[[ -z $config || -f $config ]] || die "config file $config does not exist"
[[ -z $image || -f $image ]] || die "image $image does not exist"
[[ $folds =~ ^[0-9]+$ ]] && ((folds >= 2)) || die "--folds must be an integer >= 2; received '$folds'"
read -r -a view_list <<<"$views"
for v in "${view_list[@]}"; do
    [[ $v =~ ^(axial|sagittal|coronal)$ ]] || die "unknown view '$v'; expected axial, sagittal or coronal"
done
((${#view_list[@]})) || die "--views is empty"
for s in "${sets[@]}"; do [[ $s == *=* ]] || die "--set expects KEY=VALUE; received '$s'"; done
for n in "$gpus" "$nodes" "$shards"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "--gpus, --nodes and --predict-shards must be integers >= 1; received '$n'"
done

mkdir -p "$out/logs"
CV_DIR=$(cd "$out" && pwd)
DATA=$(cd "$data" && pwd)
[[ -n $config ]] && config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")
[[ -n $image ]] && image=$(cd "$(dirname "$image")" && pwd)/$(basename "$image")
# the job scripts read these (sbatch's default --export=ALL passes the environment on)
export DATA CV_DIR STORE="$CV_DIR/store.h5" N_FOLDS=$folds VIEWS="${view_list[*]}"
export CONFIG=$config IMAGE=$image BIND=$bind SET="${sets[*]}" TRUTH=$DATA
[[ -n $account ]] && common+=(--account="$account")
cpu_common=("${common[@]}") gpu_common=("${common[@]}")
[[ -n $partition ]] && cpu_common+=(--partition="$partition")
gpu_partition=${gpu_partition:-$partition}
[[ -n $gpu_partition ]] && gpu_common+=(--partition="$gpu_partition")
((cpu)) && gpu_common+=(--gres=none)

n_tasks=$((${#view_list[@]} * folds))
array="0-$((n_tasks - 1))${max_parallel:+%$max_parallel}"

submit() {  # submit STEP SCRIPT LOG OPTS...: sbatch --parsable; echo the job id
    local step=$1 script=$2 log=$3
    shift 3
    local cmd=(sbatch --parsable --job-name="bts-$step" --output="$CV_DIR/logs/$log" "$@"
        "$SLURM_DIR/$script")
    if ((dry)); then
        echo "${cmd[*]}" >&2
        echo "DRYRUN-$step"
        return
    fi
    local id
    id=$("${cmd[@]}") || die "sbatch failed for $step: ${cmd[*]}"
    echo "${id%%;*}"  # --parsable prints "id" or "id;cluster"
}

read -r -a opts <<<"${PREPARE_OPTS:-}"
prep=$(submit prepare prepare.sbatch "%x-%j.out" "${cpu_common[@]}" "${opts[@]}")
read -r -a opts <<<"${TRAIN_OPTS:-}"
multi=()  # one process per GPU: train.sbatch runs them with srun
if ((gpus > 1 || nodes > 1)); then
    multi=(--nodes="$nodes" --ntasks-per-node="$gpus")
    ((cpu)) || multi+=(--gres="gpu:$gpus")
fi
train=$(submit train train.sbatch "%x-%A_%a.out" --array="$array" \
    --dependency="afterok:$prep" "${gpu_common[@]}" "${multi[@]}" "${opts[@]}")
read -r -a opts <<<"${PREDICT_OPTS:-}"
sharded=() shard_log="%x-%j.out"
((shards > 1)) && sharded=(--array="0-$((shards - 1))") shard_log="%x-%A_%a.out"
pred=$(submit predict predict.sbatch "$shard_log" --dependency="afterok:$train" \
    "${sharded[@]}" "${gpu_common[@]}" "${opts[@]}")
read -r -a opts <<<"${EVALUATE_OPTS:-}"
if ((shards > 1)); then  # a shard array, then one merge job
    eval_part=$(submit evaluate evaluate.sbatch "%x-%A_%a.out" --dependency="afterok:$pred" \
        "${sharded[@]}" "${cpu_common[@]}" "${opts[@]}")
    eval_id=$(submit evaluate-merge evaluate.sbatch "%x-%j.out" --dependency="afterok:$eval_part" \
        --export=ALL,MERGE=1 "${cpu_common[@]}" "${opts[@]}")
else
    eval_id=$(submit evaluate evaluate.sbatch "%x-%j.out" --dependency="afterok:$pred" \
        "${cpu_common[@]}" "${opts[@]}")
fi

echo "prepare $prep"
echo "train $train"
echo "predict $pred"
echo "evaluate $eval_id"
echo "submit_cv: $n_tasks train task(s) (views: ${view_list[*]}; folds: $folds); logs in" \
    "$CV_DIR/logs, metrics will be in $CV_DIR/metrics.csv; watch: squeue -j" \
    "$prep,$train,$pred,$eval_id" >&2
