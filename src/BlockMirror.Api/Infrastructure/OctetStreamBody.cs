namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// Marks an endpoint that reads its body itself as raw bytes (application/octet-stream), for the
/// OpenAPI document (<see cref="OctetStreamBodyOperationFilter"/>): unlike Accepts metadata it
/// does not make routing refuse other types, so the endpoint can say which type it expects.
/// </summary>
public sealed class OctetStreamBody;
