using System.Net;
using System.Net.Sockets;
using BlockMirror.Api.Contracts;
using BlockMirror.Api.Infrastructure;
using BlockMirror.Core;
using BlockMirror.Core.Nodes;
using Microsoft.AspNetCore.Http.HttpResults;

namespace BlockMirror.Api.Endpoints;

/// <summary>Routes for /api/v1/exports: nodes served over NBD (QEMU's block-export-add).</summary>
public static class ExportEndpoints
{
    public static RouteGroupBuilder MapExportEndpoints(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/api/v1/exports").WithTags("Exports");
        group.MapPost("/", AddExport).WithName(nameof(AddExport)).ProducesProblem(400).ProducesProblem(404).ProducesProblem(409);
        group.MapGet("/", ListExports).WithName(nameof(ListExports));
        group.MapGet("/{name}", GetExport).WithName(nameof(GetExport)).ProducesProblem(404);
        group.MapDelete("/{name}", RemoveExport).WithName(nameof(RemoveExport)).ProducesProblem(404);
        return group;
    }

    /// <summary>Serve a node over NBD (block-export-add).</summary>
    /// <remarks>Listed bitmaps become qemu:dirty-bitmap:&lt;name&gt; contexts and are busy while exported; writes through a writable export take the node's write path.</remarks>
    public static async Task<Created<ExportDto>> AddExport(CreateExportRequest request, BlockLayer layer, NbdHost nbd, CancellationToken cancellationToken)
    {
        var name = RequestValidationException.Require(request.Name, "name");
        var node = RequestValidationException.Require(request.Node, "node");
        var export = await layer.AddExportAsync(name, node, request.Writable ?? true, request.Bitmaps ?? [], cancellationToken);
        return TypedResults.Created($"/api/v1/exports/{Uri.EscapeDataString(name)}", ToDto(export, nbd));
    }

    /// <summary>List NBD exports, those not served since the last start included (<c>served: false</c>).</summary>
    public static Ok<ItemsDto<ExportDto>> ListExports(BlockLayer layer, NbdHost nbd) =>
        TypedResults.Ok(new ItemsDto<ExportDto>([.. layer.Exports.Select(e => ToDto(e, nbd))
            .Concat(layer.UnservedExports.Select(ToDto))
            .OrderBy(e => e.CreatedAt)]));

    /// <summary>Get an NBD export (with the URI clients connect to, or why it is not served).</summary>
    public static Ok<ExportDto> GetExport(string name, BlockLayer layer, NbdHost nbd) =>
        TypedResults.Ok(layer.FindExport(name) is { } served ? ToDto(served, nbd)
            : layer.FindUnservedExport(name) is { } unserved ? ToDto(unserved)
            : throw BlockErrors.NotFound("export-not-found", $"Export '{name}' is not found"));

    /// <summary>Remove an NBD export (block-export-del).</summary>
    /// <remarks>Its record goes, its clients are disconnected, its bitmaps are no longer busy. An export not served since the start is removed the same way.</remarks>
    public static async Task<NoContent> RemoveExport(string name, BlockLayer layer, NbdHost nbd, CancellationToken cancellationToken)
    {
        await layer.RemoveExportAsync(name, cancellationToken);
        nbd.Server?.DisconnectExport(name);
        return TypedResults.NoContent();
    }

    private static ExportDto ToDto(BlockExport e, NbdHost nbd) =>
        new(e.Name, e.Node, e.Writable, e.Bitmaps, UriOf(e.Name, nbd), e.CreatedAt, Served: true, NotServedCode: null, NotServedReason: null);

    private static ExportDto ToDto(UnservedExport e) =>
        new(e.Name, e.Record.Node, e.Record.Writable, e.Record.Bitmaps, Uri: null, e.Record.CreatedAt, Served: false, e.Code, e.Reason);

    /// <summary>The URI a client uses (nbd://host:port/name or nbd+unix:///name?socket=path; nbds when the server requires TLS).</summary>
    private static string? UriOf(string name, NbdHost nbd)
    {
        var scheme = nbd.Server?.Options.Tls is null ? "nbd" : "nbds";
        return nbd.LocalEndPoint switch
        {
            IPEndPoint ip => $"{scheme}://{(ip.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{ip.Address}]" : ip.Address.ToString())}:{ip.Port}/{Uri.EscapeDataString(name)}",
            UnixDomainSocketEndPoint unix => $"{scheme}+unix:///{Uri.EscapeDataString(name)}?socket={unix}",
            _ => null,
        };
    }
}
