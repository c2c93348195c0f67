#!/bin/sh
# Cross-modal results of docs/results.md: train each config, export one encoder per modality to
# models/crossmodal/<name>-<modality>.onnx, and score all four directions on the test pairs with rsir eval-pairs.
set -e
cd "$(dirname "$0")/../.."
# the labelled configs' rule-based land-cover layers (rsir spectral-labels)
labels=runs/crossmodal/s2-spectral-labels.gpkg
[ -f $labels ] || .venv/bin/rsir spectral-labels demo/s2_green_red_nir.json --bands B03,B04,B08 --tile 32 --out $labels
labels=runs/crossmodal/gefolki-hr-rgb-labels.gpkg
[ -f $labels ] || .venv/bin/rsir spectral-labels --rules rgb --bands 1,2,3 --tile 32 --out $labels \
    ../shared/data/sar_optical/gefolki/HR/lngley_05521_09059_000_090813_L090_CX_01_pauli_x016_y020_optique.tif
for name in ${RUNS:-gefolki-s1s2-ssl gefolki-s1s2-supervised gefolki-hr-ssl s2-rgb-nirswir-ssl s2-rgb-nirswir-supervised s2-rgb-nirswir-supervised-24 s2-rgb-nirswir-labelled-supervised s2-rgb-nirswir-labelled-ssl \
    gefolki-hr-labelled-supervised gefolki-hr-labelled-ssl}; do
    cfg="configs/crossmodal/$name.toml"
    if [ -z "$(ls models/crossmodal/$name-*.onnx 2>/dev/null)" ]; then
        echo "== train $name"
        .venv/bin/rsir train "$cfg" --export "models/crossmodal/$name.onnx" -q
    fi
    echo "== eval $name"
    .venv/bin/rsir eval-pairs "$cfg" models/crossmodal/$name-*.onnx --out "runs/crossmodal/eval-$name" --threads 2
done
