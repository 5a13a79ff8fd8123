"""The descriptor pool that warpserve's generated stubs register into."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
