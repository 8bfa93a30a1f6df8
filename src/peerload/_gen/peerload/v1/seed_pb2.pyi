from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetManifestRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class TensorEntry(_message.Message):
    __slots__ = ("name", "shape", "stride", "dtype", "nbytes", "storage_offset", "region", "boxes", "no_layout")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    STORAGE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    NO_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    stride: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    nbytes: int
    storage_offset: int
    region: str
    boxes: _containers.RepeatedCompositeFieldContainer[Box]
    no_layout: str
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., stride: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., nbytes: _Optional[int] = ..., storage_offset: _Optional[int] = ..., region: _Optional[str] = ..., boxes: _Optional[_Iterable[_Union[Box, _Mapping]]] = ..., no_layout: _Optional[str] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("tensor", "full_shape", "start", "stop", "offset")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    FULL_SHAPE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    tensor: str
    full_shape: _containers.RepeatedScalarFieldContainer[int]
    start: _containers.RepeatedScalarFieldContainer[int]
    stop: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    def __init__(self, tensor: _Optional[str] = ..., full_shape: _Optional[_Iterable[int]] = ..., start: _Optional[_Iterable[int]] = ..., stop: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ...) -> None: ...

class RegionEntry(_message.Message):
    __slots__ = ("name", "size", "addr", "device_id", "checksum", "memory")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    addr: int
    device_id: int
    checksum: str
    memory: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., addr: _Optional[int] = ..., device_id: _Optional[int] = ..., checksum: _Optional[str] = ..., memory: _Optional[str] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("worker_id", "mx_source_id", "worker_rank", "tensors", "checksum_algorithm", "regions", "part_bytes", "part_checksums")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MX_SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_RANK_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    PART_BYTES_FIELD_NUMBER: _ClassVar[int]
    PART_CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    mx_source_id: str
    worker_rank: int
    tensors: _containers.RepeatedCompositeFieldContainer[TensorEntry]
    checksum_algorithm: str
    regions: _containers.RepeatedCompositeFieldContainer[RegionEntry]
    part_bytes: int
    part_checksums: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, worker_id: _Optional[str] = ..., mx_source_id: _Optional[str] = ..., worker_rank: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[TensorEntry, _Mapping]]] = ..., checksum_algorithm: _Optional[str] = ..., regions: _Optional[_Iterable[_Union[RegionEntry, _Mapping]]] = ..., part_bytes: _Optional[int] = ..., part_checksums: _Optional[_Iterable[str]] = ...) -> None: ...

class GetAvailabilityRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class Availability(_message.Message):
    __slots__ = ("version", "bitmap", "part_count", "complete", "pending")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BITMAP_FIELD_NUMBER: _ClassVar[int]
    PART_COUNT_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    version: int
    bitmap: bytes
    part_count: int
    complete: bool
    pending: bytes
    def __init__(self, version: _Optional[int] = ..., bitmap: _Optional[bytes] = ..., part_count: _Optional[int] = ..., complete: bool = ..., pending: _Optional[bytes] = ...) -> None: ...

class AcquireLeaseRequest(_message.Message):
    __slots__ = ("worker_id", "reader")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    READER_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    reader: str
    def __init__(self, worker_id: _Optional[str] = ..., reader: _Optional[str] = ...) -> None: ...

class AcquireLeaseResponse(_message.Message):
    __slots__ = ("lease_id", "ttl_ms")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    ttl_ms: int
    def __init__(self, lease_id: _Optional[str] = ..., ttl_ms: _Optional[int] = ...) -> None: ...

class ReleaseLeaseRequest(_message.Message):
    __slots__ = ("lease_id", "bytes_read", "parts_read")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    PARTS_READ_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    bytes_read: int
    parts_read: int
    def __init__(self, lease_id: _Optional[str] = ..., bytes_read: _Optional[int] = ..., parts_read: _Optional[int] = ...) -> None: ...

class ReleaseLeaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: bool = ...) -> None: ...

class RegionRanges(_message.Message):
    __slots__ = ("region", "offsets", "sizes")
    REGION_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    region: str
    offsets: _containers.RepeatedScalarFieldContainer[int]
    sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, region: _Optional[str] = ..., offsets: _Optional[_Iterable[int]] = ..., sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class DigestRangesRequest(_message.Message):
    __slots__ = ("worker_id", "ranges", "check_parts", "lease_id")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    CHECK_PARTS_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    ranges: _containers.RepeatedCompositeFieldContainer[RegionRanges]
    check_parts: bool
    lease_id: str
    def __init__(self, worker_id: _Optional[str] = ..., ranges: _Optional[_Iterable[_Union[RegionRanges, _Mapping]]] = ..., check_parts: bool = ..., lease_id: _Optional[str] = ...) -> None: ...

class DigestRangesResponse(_message.Message):
    __slots__ = ("digest", "parts_checked")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    PARTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    digest: str
    parts_checked: int
    def __init__(self, digest: _Optional[str] = ..., parts_checked: _Optional[int] = ...) -> None: ...
