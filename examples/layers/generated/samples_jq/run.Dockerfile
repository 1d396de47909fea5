ARG base_image
FROM ${base_image}

ARG packages

USER root
RUN apt-get update && apt-get install -y --no-install-recommends ${packages} && rm -rf /var/lib/apt/lists/*
COPY jq-defaults.txt /etc/imgext-example/jq-defaults.txt

LABEL io.buildpacks.rebasable=true
USER 1000:1000
