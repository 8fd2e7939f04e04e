#!/usr/bin/env bash
# Copy prepared TensorFlow Datasets from object storage to this node's local disk, so that every node
# reads the data sets at the same path (RAYMEM_DATA_DIR). cluster.yaml runs it in the setup commands
# of every node; `aws s3 sync` copies only what is missing or changed, so re-running it is cheap.
#
#   RAYMEM_DATA_SOURCE=s3://BUCKET/tensorflow_datasets RAYMEM_DATA_DIR=/mnt/data/tensorflow_datasets \
#       scripts/sync_data.sh mnist cifar10 cifar100 imagenet2012
#
# RAYMEM_DATA_SOURCE holds tfds's layout (NAME/VERSION/...), as written by
# `tfds.builder(NAME, data_dir=DIR).download_and_prepare()` and uploaded with `aws s3 sync DIR s3://...`.
# A data set missing from the source is reported and skipped (that data set's runs then fail with
# raymem's "not prepared" error naming RAYMEM_DATA_DIR). With RAYMEM_DATA_SOURCE unset or still the
# placeholder, nothing is copied and the setup goes on.
set -euo pipefail

source_root="${RAYMEM_DATA_SOURCE:-}"
target_root="${RAYMEM_DATA_DIR:-/mnt/data/tensorflow_datasets}"

if [[ -z "$source_root" || "$source_root" == *YOUR-BUCKET* ]]; then
    echo "sync_data: RAYMEM_DATA_SOURCE is not set in cluster.yaml; no data set copied to $target_root" >&2
    exit 0
fi
if [[ "$source_root" != s3://* ]]; then
    echo "sync_data: RAYMEM_DATA_SOURCE=$source_root is not an s3:// URI; no data set copied" >&2
    exit 0
fi

mkdir -p "$target_root" 2>/dev/null || { sudo mkdir -p "$target_root" && sudo chown "$(id -u):$(id -g)" "$target_root"; }

if ! command -v aws >/dev/null; then  # the Deep Learning AMIs have it; plain Ubuntu images do not
    uv pip install --python "$HOME/raymem-venv/bin/python" --quiet awscli
fi

for name in "$@"; do
    if ! aws s3 ls "${source_root%/}/$name/" >/dev/null 2>&1; then
        echo "sync_data: ${source_root%/}/$name/ not found (or not readable); $name skipped" >&2
        continue
    fi
    echo "sync_data: ${source_root%/}/$name -> $target_root/$name"
    aws s3 sync --only-show-errors "${source_root%/}/$name" "$target_root/$name"
done
