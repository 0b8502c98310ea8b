using System.Buffers;
using BlockMirror.Api.Contracts;
using BlockMirror.Api.Infrastructure;
using BlockMirror.Api.Options;
using BlockMirror.Core;
using BlockMirror.Core.Images;
using BlockMirror.Core.Nodes;
using BlockMirror.Nbd;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.Extensions.Options;

namespace BlockMirror.Api.Endpoints;

/// <summary>Routes for /api/v1/nodes: images the service owns and their data path.</summary>
public static class NodeEndpoints
{
    /// <summary>Chunk size for streaming data in and out: large enough for throughput, small enough to pool.</summary>
    private const int DataChunk = 1 << 20;

    public static RouteGroupBuilder MapNodeEndpoints(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/api/v1/nodes").WithTags("Nodes");
        group.MapPost("/", CreateNode).WithName(nameof(CreateNode))
            .ProducesProblem(400).ProducesProblem(404).ProducesProblem(409);
        group.MapGet("/", ListNodes).WithName(nameof(ListNodes));
        group.MapGet("/{node}", GetNode).WithName(nameof(GetNode)).ProducesProblem(404);
        group.MapDelete("/{node}", DeleteNode).WithName(nameof(DeleteNode)).ProducesProblem(404).ProducesProblem(409);

        // No Accepts metadata: routing would refuse another type with a 415 that cannot say which
        // type is expected; WriteData refuses it saying so, and the document shows the body.
        group.MapPut("/{node}/data", WriteData).WithName(nameof(WriteData))
            .WithMetadata(new OctetStreamBody())
            .ProducesProblem(400).ProducesProblem(404).ProducesProblem(409).ProducesProblem(413);
        group.MapGet("/{node}/data", ReadData).WithName(nameof(ReadData))
            .Produces(200, contentType: "application/octet-stream").ProducesProblem(400).ProducesProblem(404);
        group.MapPost("/{node}/zero", WriteZeroes).WithName(nameof(WriteZeroes))
            .ProducesProblem(400).ProducesProblem(404).ProducesProblem(409);
        group.MapPost("/{node}/discard", Discard).WithName(nameof(Discard))
            .ProducesProblem(400).ProducesProblem(404).ProducesProblem(409);
        group.MapGet("/{node}/extents", GetAllocation).WithName(nameof(GetAllocation))
            .ProducesProblem(400).ProducesProblem(404);
        return group;
    }

    /// <summary>Add a node: open or create a raw or qcow2 image, or connect to an NBD export.</summary>
    /// <remarks>raw: <c>path</c> under the image root, with <c>create</c> to make a new sparse file. qcow2: <c>path</c> under the image root, with <c>create</c> (size, clusterSize, backing, backingFormat) to make a new image; its backing chain is opened read-only. nbd: <c>uri</c> of a remote export.</remarks>
    public static async Task<Created<NodeDto>> CreateNode(CreateNodeRequest request, BlockLayer layer, CancellationToken cancellationToken)
    {
        CheckDriverMembers(request);
        var name = RequestValidationException.Require(request.Name, "name");
        var driver = RequestValidationException.Require(request.Driver, "driver");
        long? size = null;
        ImageCreateOptions? options = null;
        if (request.Create is { } create)
        {
            size = RequestValidationException.Require(create.Size, "create.size");
            options = new ImageCreateOptions(ClusterSizeOf(create), create.Backing, create.BackingFormat);
        }
        var spec = new NodeSpec(name, driver, request.Path, TlsUri(request), size, request.ReadOnly ?? false, options,
            request.Cache?.Direct ?? false);
        var node = await layer.CreateNodeAsync(spec, cancellationToken);
        return TypedResults.Created($"/api/v1/nodes/{Uri.EscapeDataString(node.Name)}", node.ToDto(layer.Root));
    }

    /// <summary>
    /// The URI the node connects to: with <c>tls: true</c> its TLS form (<c>nbds://</c>), so the URI
    /// alone says how to reach the export, is stored as it is, and a restart or a pivot carries TLS along.
    /// </summary>
    private static string? TlsUri(CreateNodeRequest request) =>
        request.Tls == true && request.Uri is { } uri ? NbdUri.WithTls(uri) : request.Uri;

    /// <summary>
    /// The members each driver takes, checked before any state: a raw node needs a path, an nbd
    /// node a uri and neither path nor create. Unknown drivers are named with the known ones.
    /// </summary>
    private static void CheckDriverMembers(CreateNodeRequest request)
    {
        var errors = new Dictionary<string, string[]>();
        switch (request.Driver)
        {
            case null:
                return;
            case "raw":
                if (request.Path is null)
                    errors["path"] = ["required with driver raw"];
                if (request.Uri is not null)
                    errors["uri"] = ["only with driver nbd"];
                if (request.Tls is not null)
                    errors["tls"] = ["only with driver nbd"];
                CheckQcow2CreateMembers(request.Create, errors);
                break;
            case "qcow2":
                if (request.Path is null)
                    errors["path"] = ["required with driver qcow2"];
                if (request.Uri is not null)
                    errors["uri"] = ["only with driver nbd"];
                if (request.Tls is not null)
                    errors["tls"] = ["only with driver nbd"];
                if (request.Cache?.Direct == true)
                    errors["cache.direct"] = ["only with driver raw (a qcow2 image's metadata goes through the page cache)"];
                if (request.Create is { BackingFormat: { } format } && format is not ("raw" or "qcow2"))
                    errors["create.backingFormat"] = [$"expected one of: raw, qcow2; got {System.Text.Json.JsonSerializer.Serialize(format)}"];
                if (request.Create is { BackingFormat: not null, Backing: null })
                    errors["create.backingFormat"] = ["only with create.backing"];
                if (request.Create is { ClusterSize: { } cluster } && (cluster < 512 || cluster > 2L << 20 || (cluster & (cluster - 1)) != 0))
                    errors["create.clusterSize"] = ["expected a power of two from 512 to 2M"];
                break;
            case "nbd":
                if (request.Uri is null)
                    errors["uri"] = ["required with driver nbd"];
                if (request.Path is not null)
                    errors["path"] = ["only with driver raw or qcow2 (an nbd node takes a uri)"];
                if (request.Create is not null)
                    errors["create"] = ["only with driver raw or qcow2 (an nbd node cannot create its image)"];
                if (request.Cache?.Direct == true)
                    errors["cache.direct"] = ["only with driver raw (an nbd node has no local file)"];
                if (request.Tls == false && request.Uri is { } uri && uri.StartsWith("nbds", StringComparison.OrdinalIgnoreCase))
                    errors["tls"] = ["false contradicts the URI: an nbds URI requires TLS (use nbd:// for a plain connection)"];
                break;
            default:
                errors["driver"] = [$"expected one of: raw, qcow2, nbd; got {System.Text.Json.JsonSerializer.Serialize(request.Driver)}"];
                break;
        }
        if (errors.Count > 0)
            throw new RequestValidationException(errors);
    }

    /// <summary>The qcow2-only create members on a raw node: refused, not ignored.</summary>
    private static void CheckQcow2CreateMembers(CreateImageSpec? create, Dictionary<string, string[]> errors)
    {
        if (create?.ClusterSize is not null)
            errors["create.clusterSize"] = ["only with driver qcow2"];
        if (create?.Backing is not null)
            errors["create.backing"] = ["only with driver qcow2"];
        if (create?.BackingFormat is not null)
            errors["create.backingFormat"] = ["only with driver qcow2"];
    }

    /// <summary>The cluster size as the driver takes it (the member was checked against its range).</summary>
    private static int? ClusterSizeOf(CreateImageSpec create) => create.ClusterSize is { } c ? (int)c : null;

    /// <summary>List nodes.</summary>
    public static Ok<ItemsDto<NodeDto>> ListNodes(BlockLayer layer) =>
        TypedResults.Ok(new ItemsDto<NodeDto>([.. layer.Nodes.Select(n => n.ToDto(layer.Root))]));

    /// <summary>Get a node.</summary>
    public static Ok<NodeDto> GetNode(string node, BlockLayer layer) => TypedResults.Ok(layer.GetNode(node).ToDto(layer.Root));

    /// <summary>Remove a node and its bitmaps.</summary>
    /// <remarks>Refused while a job or an export uses it (node-busy). The image file stays unless <c>deleteImage=true</c>.</remarks>
    /// <param name="deleteImage">Also delete the raw image file.</param>
    public static async Task<NoContent> DeleteNode(string node, BlockLayer layer, CancellationToken cancellationToken, bool deleteImage = false)
    {
        await layer.DeleteNodeAsync(node, deleteImage, cancellationToken);
        return TypedResults.NoContent();
    }

    /// <summary>Write bytes at an offset (the body, application/octet-stream).</summary>
    /// <remarks>The write takes the node's write path: its enabled bitmaps record it, a running mirror sees it, as NBD writes do.</remarks>
    /// <param name="offset">Where the body is written: a byte offset (an integer, or a size such as 1M).</param>
    public static async Task<NoContent> WriteData(string node, ByteCount offset, HttpContext context, BlockLayer layer, IOptions<StorageOptions> storage)
    {
        CheckOctetStream(context.Request);
        var n = layer.GetNode(node);
        if (n.ReadOnly)
            throw BlockErrors.NodeReadOnly(node);
        var limit = storage.Value.MaxDataBodyBytes;
        var declared = context.Request.ContentLength;
        if (declared > limit)
            throw BodyTooLarge();
        if (declared is { } length)
        {
            n.CheckRange(offset, length);
            await StreamBodyAsync(n, offset, context.Request.Body, limit, context.RequestAborted);
        }
        else
        {
            n.CheckRange(offset, 0);
            await BufferThenWriteAsync(n, offset, context.Request.Body, limit, context.RequestAborted);
        }
        return TypedResults.NoContent();
    }

    /// <summary>
    /// A body of declared length (within the limit and the node, both checked before this) is
    /// streamed in chunks from one pooled buffer.
    /// </summary>
    private static async Task StreamBodyAsync(BlockNode node, long offset, Stream body, long limit, CancellationToken cancellationToken)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(DataChunk);
        try
        {
            var position = offset;
            while (true)
            {
                var filled = await ReadChunkAsync(body, buffer, cancellationToken);
                if (filled == 0)
                    break;
                if (position - offset + filled > limit)
                    throw BodyTooLarge();
                await node.WriteAsync(WriteRequest.ForData(position, buffer.AsMemory(0, filled)), cancellationToken);
                position += filled;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>
    /// A body of unknown length (chunked encoding) is read whole into pooled chunks before anything
    /// is written: one over the limit is refused with 413 and one past the node's end with
    /// out-of-range, both with the image and its bitmaps untouched (a refused request changes
    /// nothing). Memory is bounded by the limit.
    /// </summary>
    private static async Task BufferThenWriteAsync(BlockNode node, long offset, Stream body, long limit, CancellationToken cancellationToken)
    {
        var chunks = new List<byte[]>();
        try
        {
            long total = 0;
            var last = 0;
            do
            {
                var buffer = ArrayPool<byte>.Shared.Rent(DataChunk);
                chunks.Add(buffer);
                last = await ReadChunkAsync(body, buffer, cancellationToken);
                total += last;
                if (total > limit)
                    throw BodyTooLarge();
            }
            while (last == DataChunk);

            node.CheckRange(offset, total);
            for (var i = 0; i < chunks.Count; i++)
            {
                var filled = i == chunks.Count - 1 ? last : DataChunk;
                if (filled > 0)
                    await node.WriteAsync(WriteRequest.ForData(offset + (long)i * DataChunk, chunks[i].AsMemory(0, filled)), cancellationToken);
            }
        }
        finally
        {
            foreach (var buffer in chunks)
                ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private static BadHttpRequestException BodyTooLarge() =>
        new("The request body is too large", StatusCodes.Status413PayloadTooLarge);

    private static async Task<int> ReadChunkAsync(Stream body, byte[] buffer, CancellationToken cancellationToken)
    {
        var filled = 0;
        while (filled < DataChunk)
        {
            var read = await body.ReadAsync(buffer.AsMemory(filled, DataChunk - filled), cancellationToken);
            if (read == 0)
                break;
            filled += read;
        }
        return filled;
    }

    /// <summary>
    /// The data endpoint reads the body as raw bytes: a body declared as anything else (JSON, a
    /// form: curl's default for --data-binary) is refused rather than written as bytes. A body
    /// without a type is taken as bytes.
    /// </summary>
    private static void CheckOctetStream(HttpRequest request)
    {
        var type = request.ContentType;
        if (type is null)
            return;
        if (!Microsoft.Net.Http.Headers.MediaTypeHeaderValue.TryParse(type, out var media)
            || !media.MediaType.Equals("application/octet-stream", StringComparison.OrdinalIgnoreCase))
            throw new UnsupportedMediaTypeException("application/octet-stream", type);
    }

    /// <summary>Read bytes at an offset (application/octet-stream).</summary>
    /// <param name="offset">First byte (an integer, or a size such as 1M).</param>
    /// <param name="length">Bytes to read (an integer, or a size such as 64K).</param>
    public static async Task<EmptyHttpResult> ReadData(string node, ByteCount offset, ByteCount length, HttpContext context, BlockLayer layer)
    {
        var n = layer.GetNode(node);
        n.CheckRange(offset, length);
        context.Response.ContentType = "application/octet-stream";
        context.Response.ContentLength = length;
        var buffer = ArrayPool<byte>.Shared.Rent(DataChunk);
        try
        {
            var done = 0L;
            while (done < length)
            {
                var chunk = (int)Math.Min(DataChunk, length - done);
                await n.ReadAsync(offset + done, buffer.AsMemory(0, chunk), context.RequestAborted);
                await context.Response.Body.WriteAsync(buffer.AsMemory(0, chunk), context.RequestAborted);
                done += chunk;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
        return TypedResults.Empty;
    }

    /// <summary>Write zeroes to a range (a write: it marks bitmaps).</summary>
    public static async Task<NoContent> WriteZeroes(string node, ZeroRequest request, BlockLayer layer, CancellationToken cancellationToken)
    {
        var n = layer.GetNode(node);
        var offset = RequestValidationException.Require(request.Offset, "offset");
        var length = RequestValidationException.Require(request.Length, "length");
        await n.WriteAsync(WriteRequest.ForZeroes(offset, length, request.MayUnmap ?? true), cancellationToken);
        return TypedResults.NoContent();
    }

    /// <summary>Discard a range (it reads as zeroes afterwards on raw images; it marks bitmaps).</summary>
    public static async Task<NoContent> Discard(string node, DiscardRequest request, BlockLayer layer, CancellationToken cancellationToken)
    {
        var n = layer.GetNode(node);
        var offset = RequestValidationException.Require(request.Offset, "offset");
        var length = RequestValidationException.Require(request.Length, "length");
        await n.WriteAsync(WriteRequest.ForDiscard(offset, length), cancellationToken);
        return TypedResults.NoContent();
    }

    /// <summary>Get the allocation map of a range: coalesced data and zero extents.</summary>
    /// <param name="offset">First byte (default 0; an integer, or a size such as 1M).</param>
    /// <param name="length">Bytes to map (default: to the end of the node).</param>
    public static async Task<Ok<ItemsDto<AllocationExtentDto>>> GetAllocation(string node, BlockLayer layer, CancellationToken cancellationToken, ByteCount? offset = null, ByteCount? length = null)
    {
        var n = layer.GetNode(node);
        var start = offset?.Value ?? 0;
        var len = length?.Value ?? Math.Max(0, n.Size - Math.Max(0, start));
        n.CheckRange(start, len);
        var items = new List<AllocationExtentDto>();
        await foreach (var e in ImageExtents.EnumerateAsync(n.Image, start, len, cancellationToken))
            items.Add(new AllocationExtentDto(e.Offset, e.Length, e.Kind == ExtentKind.Data ? "data" : "zero"));
        return TypedResults.Ok(new ItemsDto<AllocationExtentDto>(items));
    }
}
