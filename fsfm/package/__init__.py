"""Model packages: the folder format that export writes and the service reads (README, "Model packages")."""

from fsfm.package.manifest import Manifest
from fsfm.package.repository import ModelPackage, ModelRepository, PackageError

__all__ = ["Manifest", "ModelPackage", "ModelRepository", "PackageError"]
