"""vlm-operator: run CPU vision-language models on Kubernetes and autoscale them.

The public surface is small: the API models (`VLMServiceSpec`,
`VLMServiceStatus`) and the command line (`vlm-operator --help`). Everything
else is an implementation module and may change between releases.
"""

from vlm_operator.models import VLMService, VLMServiceSpec, VLMServiceStatus

__version__ = "0.1.0"

__all__ = ["VLMService", "VLMServiceSpec", "VLMServiceStatus", "__version__"]
