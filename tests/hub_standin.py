"""A local stand-in for the Hugging Face Hub's HTTP API — the part huggingface_hub calls to create a model
repository, commit files to it (regular uploads: base64 in the commit) and download them (repo info, the
file tree, `resolve/` with the commit and ETag headers) — so `elt push` and `elt.load("org/name")` are
tested through huggingface_hub's own code, with no network. Files live in memory; every request is logged.

    with HubStandIn() as hub:   # sets HF_ENDPOINT and HF_TOKEN for the block
        ...
"""

import base64
import hashlib
import json
import os
import threading
import time

from conftest import free_port


class HubStandIn:
    def __init__(self, token: str = "hf_standin_token"):
        self.token = token
        self.repos = {}  # repo id → {"files": {path: bytes}, "sha": commit, "private": bool}
        self.requests = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ the app

    def app(self):
        from fastapi import FastAPI, Request, Response
        from fastapi.responses import JSONResponse

        app = FastAPI()
        hub = self

        @app.middleware("http")
        async def log(request: Request, call_next):
            hub.requests.append((request.method, request.url.path))
            if request.method in ("POST", "PUT", "DELETE") and \
                    request.headers.get("authorization") != f"Bearer {hub.token}":
                return JSONResponse({"error": "Invalid credentials"}, status_code=401)
            return await call_next(request)

        @app.post("/api/repos/create")
        async def create(request: Request):
            body = await request.json()
            repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
            if repo_id in hub.repos:
                return JSONResponse({"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"},
                                    status_code=409)
            hub.repos[repo_id] = {"files": {}, "sha": "0" * 40, "private": bool(body.get("private"))}
            return {"url": f"{hub.url}/{repo_id}", "name": repo_id}

        @app.post("/api/validate-yaml")
        async def validate_yaml(request: Request):
            body = await request.json()
            errors = hub.card_errors(body.get("content", ""))
            if errors:
                return JSONResponse({"errors": [{"message": e} for e in errors]}, status_code=400)
            return {"errors": [], "warnings": []}

        @app.post("/api/models/{ns}/{name}/preupload/{revision}")
        async def preupload(ns: str, name: str, revision: str, request: Request):
            body = await request.json()
            return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                              for f in body["files"]]}

        @app.post("/api/models/{ns}/{name}/commit/{revision}")
        async def commit(ns: str, name: str, revision: str, request: Request):
            repo = hub.repos.get(f"{ns}/{name}")
            if repo is None:
                return JSONResponse({"error": "Repository not found"}, status_code=404)
            for line in (await request.body()).decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    v = item["value"]
                    repo["files"][v["path"]] = base64.b64decode(v["content"])
                elif item["key"] == "deletedFile":
                    repo["files"].pop(item["value"]["path"], None)
            repo["sha"] = hashlib.sha1(f"{time.time_ns()} {sorted(repo['files'])}".encode()).hexdigest()
            return {"commitUrl": f"{hub.url}/{ns}/{name}/commit/{repo['sha']}", "commitOid": repo["sha"],
                    "pullRequestUrl": None}

        def found(ns, name):
            repo = hub.repos.get(f"{ns}/{name}")
            if repo is None:
                return None, JSONResponse({"error": "Repository not found"}, status_code=404,
                                          headers={"X-Error-Code": "RepoNotFound"})
            return repo, None

        @app.get("/api/models/{ns}/{name}/revision/{revision}")
        async def info(ns: str, name: str, revision: str):
            repo, missing = found(ns, name)
            if missing:
                return missing
            return {"id": f"{ns}/{name}", "modelId": f"{ns}/{name}", "sha": repo["sha"], "private": repo["private"],
                    "siblings": [{"rfilename": p} for p in sorted(repo["files"])], "tags": [], "downloads": 0,
                    "likes": 0, "library_name": "elt"}

        @app.get("/api/models/{ns}/{name}/tree/{revision}")
        async def tree(ns: str, name: str, revision: str):
            repo, missing = found(ns, name)
            if missing:
                return missing
            return [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    for p, b in sorted(repo["files"].items())]

        @app.api_route("/{ns}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
        async def resolve(ns: str, name: str, revision: str, path: str, request: Request):
            repo, missing = found(ns, name)
            if missing:
                return missing
            if path not in repo["files"]:
                return JSONResponse({"error": "Entry not found"}, status_code=404,
                                    headers={"X-Error-Code": "EntryNotFound"})
            data = repo["files"][path]
            headers = {"X-Repo-Commit": repo["sha"], "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                       "Content-Length": str(len(data))}
            return Response(b"" if request.method == "HEAD" else data, headers=headers,
                            media_type="application/octet-stream")

        return app

    LICENSES = {"apache-2.0", "mit", "cc-by-4.0", "cc-by-nc-4.0", "bsd-3-clause", "openrail", "other"}

    @classmethod
    def card_errors(cls, content: str) -> list[str]:
        """The Hub's checks of a model card's metadata (its YAML front matter), as its documentation states
        them: a mapping; a known license; string lists for tags and datasets; a model-index whose every result
        names a task type, a dataset (type and name) and metrics with a type and a value."""
        import yaml

        if not content.startswith("---\n") or "\n---\n" not in content[4:]:
            return ["no YAML front matter (--- ... ---) at the top of README.md"]
        try:
            meta = yaml.safe_load(content[4:content.index("\n---\n", 4)])
        except yaml.YAMLError as e:
            return [f"the front matter is not YAML: {e}"]
        if not isinstance(meta, dict):
            return ["the front matter is not a mapping"]
        errors = []
        if meta.get("license") not in cls.LICENSES:
            errors.append(f"license {meta.get('license')!r} is not a license id the Hub knows")
        for key in ("tags", "datasets"):
            if key in meta and not (isinstance(meta[key], list) and all(isinstance(v, str) for v in meta[key])):
                errors.append(f"{key} must be a list of strings")
        if not isinstance(meta.get("library_name", ""), str):
            errors.append("library_name must be a string")
        for model in meta.get("model-index", []) or []:
            for result in model.get("results", []):
                if not result.get("task", {}).get("type"):
                    errors.append("model-index: a result without task.type")
                if not (result.get("dataset", {}).get("type") and result.get("dataset", {}).get("name")):
                    errors.append("model-index: a result without dataset.type and dataset.name")
                for metric in result.get("metrics", []):
                    if "type" not in metric or "value" not in metric:
                        errors.append("model-index: a metric without type and value")
        return errors

    # ------------------------------------------------------------------ running it

    def __enter__(self) -> "HubStandIn":
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        self.env = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE")}
        os.environ.update(HF_ENDPOINT=self.url, HF_TOKEN=self.token)
        os.environ.pop("HF_HUB_OFFLINE", None)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        for k, v in self.env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
