"""The registry's distribution API, for what `obsdeploy release` needs without pulling.

Reading: the labels of what a tag holds, if anything (its revision, its context digest). They
are in the image's config blob: the distribution API gives the manifest (an index first, for a
multi-platform image) and then the config, a few KiB, instead of every layer of the image.
Writing: a tag put on an image the repository already has (`put_manifest`: the manifest's
bytes again under another tag), which is how an unchanged image is released again without a
build or a layer upload.

Authentication follows the registry's challenge (`WWW-Authenticate`): a Bearer token from
its realm (GHCR, Docker Hub), or Basic, with the credentials given (GHCR_USERNAME /
GHCR_TOKEN) or else those of ~/.docker/config.json.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from server_agent.common.errors import ImageError

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = MANIFEST_TYPES[:2]
TIMEOUT = 30


class RegistryAccessDenied(ImageError):
    """The registry refused the credentials, or asked for some and had none."""


@dataclass(frozen=True)
class ImageName:
    registry: str  # host[:port] as docker names it ("docker.io" for Docker Hub)
    repository: str  # path in the registry ("tawbury/observer", "library/redis")

    @classmethod
    def parse(cls, image: str) -> ImageName:
        from docker.auth import resolve_repository_name

        registry, name = resolve_repository_name(image)
        if registry in ("index.docker.io", "docker.io"):
            return cls("registry-1.docker.io", name if "/" in name else f"library/{name}")
        return cls(registry, name)

    @property
    def base_url(self) -> str:
        """Docker's own rule: plain HTTP for a registry on loopback, HTTPS otherwise."""
        host = self.registry.rsplit(":", 1)[0].strip("[]")
        try:
            local = ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = host == "localhost"
        return f"{'http' if local else 'https'}://{self.registry}"


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


@dataclass(frozen=True)
class Manifest:
    body: bytes  # exactly as the registry serves it: its sha256 is the digest
    media_type: str

    @property
    def digest(self) -> str:
        import hashlib

        return "sha256:" + hashlib.sha256(self.body).hexdigest()

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


class RegistryClient:
    def __init__(self, image: str, username: str | None = None, password: str | None = None) -> None:
        import requests

        self.name = ImageName.parse(image)
        self.image = image
        if username is None:
            username, password = _docker_config_credentials(self.name.registry)
        self.auth = (username, password or "") if username else None
        self.session = requests.Session()
        self.session.trust_env = True
        self._authorization: str | None = None

    def _get(self, path: str, accept: str | None = None) -> Any:
        return self._request("GET", path, {"Accept": accept} if accept else {})

    def _request(self, method: str, path: str, headers: dict[str, str],
                 data: bytes | None = None) -> Any:
        import requests

        url = f"{self.name.base_url}/v2/{self.name.repository}/{path}"
        headers = dict(headers)
        for attempt in range(2):
            if self._authorization:
                headers["Authorization"] = self._authorization
            try:
                resp = self.session.request(method, url, headers=headers, data=data,
                                            timeout=TIMEOUT)
            except requests.RequestException as exc:
                raise ImageError(f"cannot reach the registry {self.name.registry}: {exc}",
                                 hint="check the registry address in `image` and that it is up") from None
            # A token for reading is not one for writing: the registry's challenge to a put
            # names the push scope, and the token is asked for again with it.
            if resp.status_code == 401 and attempt == 0:
                self._authorization = self._authorize(resp.headers.get("WWW-Authenticate", ""))
                continue
            return resp
        return resp

    def _authorize(self, header: str) -> str:
        import requests

        scheme, params = _challenge(header)
        if self.auth is None:
            raise RegistryAccessDenied(
                f"registry {self.name.registry} asks for credentials to read {self.image}",
                hint="set GHCR_USERNAME and GHCR_TOKEN, or log in with docker")
        if scheme == "basic":
            return requests.auth._basic_auth_str(*self.auth)  # type: ignore[attr-defined,no-any-return]
        if scheme != "bearer" or "realm" not in params:
            raise ImageError(f"registry {self.name.registry} asks for {header!r}, which obsdeploy "
                             "does not speak")
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        query.setdefault("scope", f"repository:{self.name.repository}:pull")
        try:
            resp = self.session.get(params["realm"], params=query, auth=self.auth, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise ImageError(f"cannot reach the registry's token service {params['realm']}: {exc}") from None
        if resp.status_code in (401, 403):
            raise RegistryAccessDenied(
                f"registry {self.name.registry} refused the credentials of {self.auth[0]}",
                hint="check GHCR_USERNAME and GHCR_TOKEN (the token needs read:packages)")
        resp.raise_for_status()
        body = resp.json()
        return f"Bearer {body.get('token') or body.get('access_token')}"

    def manifest(self, tag: str) -> Manifest | None:
        """What `tag` names (an image manifest or an index), or None when there is no such tag."""
        resp = self._get(f"manifests/{tag}", ", ".join(MANIFEST_TYPES))
        if resp.status_code == 404:
            return None
        self._raise_for(resp, f"{self.image}:{tag}")
        body = resp.content
        media = json.loads(body).get("mediaType") or resp.headers.get("Content-Type", "").split(";")[0]
        return Manifest(body, media)

    def put_manifest(self, tag: str, manifest: Manifest) -> str:
        """Tag `manifest` (already in this repository, with its blobs) as `tag`; its digest."""
        resp = self._request("PUT", f"manifests/{tag}", {"Content-Type": manifest.media_type},
                             data=manifest.body)
        self._raise_for(resp, f"{self.image}:{tag} (a manifest put)")
        return str(resp.headers.get("Docker-Content-Digest") or manifest.digest)

    def config_labels(self, tag: str, platform: str = "linux/amd64") -> dict[str, str] | None:
        """The labels of the image `tag` names (for an index: its `platform` image, else its
        first), or None when the registry has no such tag."""
        found = self.manifest(tag)
        return None if found is None else self.labels_of(found, tag, platform)

    def labels_of(self, found: Manifest, tag: str, platform: str = "linux/amd64") -> dict[str, str] | None:
        manifest = found.json()
        media = found.media_type
        if media in INDEX_TYPES or "manifests" in manifest:
            entries = manifest.get("manifests") or []
            os_, _, arch = platform.partition("/")
            chosen = next((m for m in entries if (m.get("platform") or {}).get("os") == os_
                           and (m.get("platform") or {}).get("architecture") == arch), None)
            chosen = chosen or next(iter(entries), None)
            if chosen is None:
                return None
            resp = self._get(f"manifests/{chosen['digest']}", ", ".join(MANIFEST_TYPES[2:]))
            self._raise_for(resp, f"{self.image}@{chosen['digest']}")
            manifest = resp.json()
        config_digest = (manifest.get("config") or {}).get("digest")
        if not config_digest:
            raise ImageError(f"{self.image}:{tag}: the registry's manifest has no config")
        resp = self._get(f"blobs/{config_digest}")
        self._raise_for(resp, f"{self.image} config {config_digest}")
        config = json.loads(resp.content)
        return dict((config.get("config") or {}).get("Labels") or {})

    def _raise_for(self, resp: Any, what: str) -> None:
        if resp.status_code in (401, 403):
            raise RegistryAccessDenied(f"registry {self.name.registry} refused access to {what}",
                                       hint="set GHCR_USERNAME and GHCR_TOKEN, or log in with docker")
        if resp.status_code >= 400:
            raise ImageError(f"cannot read {what} from the registry: HTTP {resp.status_code} "
                             f"{resp.text[:200]}",
                             hint="check the registry address in `image` and that it is up")


def _docker_config_credentials(registry: str) -> tuple[str | None, str | None]:
    from docker import auth

    try:
        found = auth.resolve_authconfig(auth.load_config(), registry) or {}
    except Exception:  # an unreadable docker config is no credentials
        return None, None
    return found.get("username") or found.get("Username"), found.get("password") or found.get("Password")
