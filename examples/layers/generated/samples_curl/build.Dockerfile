ARG base_image
FROM ${base_image}

ARG user_id
ARG group_id

USER root
RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*

USER ${user_id}:${group_id}
