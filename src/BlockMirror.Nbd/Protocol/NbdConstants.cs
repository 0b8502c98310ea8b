namespace BlockMirror.Nbd.Protocol;

/// <summary>
/// Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md, and QEMU's
/// include/block/nbd.h for the <c>qemu:</c> namespace). Every multi-byte field on the wire is
/// big-endian.
/// </summary>
internal static class NbdConstants
{
    // ---- sizes of our own (not the protocol's) -------------------------------------------------

    /// <summary>The buffer of a connection's reads (28-byte headers come from it; large payloads bypass it), and of the other streaming copies.</summary>
    public const int StreamBufferBytes = 64 * 1024;

    /// <summary>The largest option data or error chunk read into memory; longer ones are refused (a peer cannot make us allocate more).</summary>
    public const int MaxMessageBytes = 64 * 1024;

    /// <summary>The longest human-readable text sent in an error reply (option or structured), in characters.</summary>
    public const int MaxErrorTextChars = 1024;

    // ---- handshake ------------------------------------------------------------------------

    /// <summary>"NBDMAGIC": first 8 bytes the server sends.</summary>
    public const ulong NbdMagic = 0x4e42444d41474943;

    /// <summary>"IHAVEOPT": newstyle magic, also the magic of every option request.</summary>
    public const ulong OptionMagic = 0x49484156454F5054;

    /// <summary>Magic of every fixed-newstyle option reply.</summary>
    public const ulong OptionReplyMagic = 0x3e889045565a9;

    public const ushort FlagFixedNewstyle = 1 << 0;
    public const ushort FlagNoZeroes = 1 << 1;

    public const uint ClientFlagFixedNewstyle = 1 << 0;
    public const uint ClientFlagNoZeroes = 1 << 1;

    public const uint OptExportName = 1;
    public const uint OptAbort = 2;
    public const uint OptList = 3;
    public const uint OptStartTls = 5;
    public const uint OptInfo = 6;
    public const uint OptGo = 7;
    public const uint OptStructuredReply = 8;
    public const uint OptListMetaContext = 9;
    public const uint OptSetMetaContext = 10;

    public const uint RepAck = 1;
    public const uint RepServer = 2;
    public const uint RepInfo = 3;
    public const uint RepMetaContext = 4;

    /// <summary>Error replies have bit 31 set.</summary>
    public const uint RepFlagError = 1u << 31;
    public const uint RepErrUnsup = RepFlagError | 1;
    public const uint RepErrPolicy = RepFlagError | 2;
    public const uint RepErrInvalid = RepFlagError | 3;
    public const uint RepErrPlatform = RepFlagError | 4;
    public const uint RepErrTlsReqd = RepFlagError | 5;
    public const uint RepErrUnknown = RepFlagError | 6;
    public const uint RepErrShutdown = RepFlagError | 7;
    public const uint RepErrBlockSizeReqd = RepFlagError | 8;
    public const uint RepErrTooBig = RepFlagError | 9;

    public const ushort InfoExport = 0;
    public const ushort InfoName = 1;
    public const ushort InfoDescription = 2;
    public const ushort InfoBlockSize = 3;

    // ---- transmission flags (16 bits, sent with the export) -------------------------------

    public const ushort TxHasFlags = 1 << 0;
    public const ushort TxReadOnly = 1 << 1;
    public const ushort TxSendFlush = 1 << 2;
    public const ushort TxSendFua = 1 << 3;
    public const ushort TxRotational = 1 << 4;
    public const ushort TxSendTrim = 1 << 5;
    public const ushort TxSendWriteZeroes = 1 << 6;
    public const ushort TxSendDf = 1 << 7;
    public const ushort TxCanMultiConn = 1 << 8;
    public const ushort TxSendResize = 1 << 9;
    public const ushort TxSendCache = 1 << 10;
    public const ushort TxSendFastZero = 1 << 11;

    // ---- requests -------------------------------------------------------------------------

    public const uint RequestMagic = 0x25609513;

    /// <summary>magic(4) flags(2) type(2) cookie(8) offset(8) length(4).</summary>
    public const int RequestHeaderSize = 28;

    public const ushort CmdFlagFua = 1 << 0;
    public const ushort CmdFlagNoHole = 1 << 1;
    public const ushort CmdFlagDf = 1 << 2;
    public const ushort CmdFlagReqOne = 1 << 3;
    public const ushort CmdFlagFastZero = 1 << 4;

    public const ushort CmdRead = 0;
    public const ushort CmdWrite = 1;
    public const ushort CmdDisc = 2;
    public const ushort CmdFlush = 3;
    public const ushort CmdTrim = 4;
    public const ushort CmdCache = 5;
    public const ushort CmdWriteZeroes = 6;
    public const ushort CmdBlockStatus = 7;

    /// <summary>A command's name for logs and metrics (constant strings: naming allocates nothing).</summary>
    public static string CommandName(ushort type) => type switch
    {
        CmdRead => "read",
        CmdWrite => "write",
        CmdDisc => "disconnect",
        CmdFlush => "flush",
        CmdTrim => "trim",
        CmdCache => "cache",
        CmdWriteZeroes => "write-zeroes",
        CmdBlockStatus => "block-status",
        _ => "unknown",
    };

    // ---- replies --------------------------------------------------------------------------

    public const uint SimpleReplyMagic = 0x67446698;
    public const uint StructuredReplyMagic = 0x668e33ef;

    /// <summary>magic(4) error(4) cookie(8).</summary>
    public const int SimpleReplyHeaderSize = 16;

    /// <summary>magic(4) flags(2) type(2) cookie(8) length(4).</summary>
    public const int StructuredReplyHeaderSize = 20;

    public const ushort ReplyFlagDone = 1 << 0;

    public const ushort ReplyTypeNone = 0;
    public const ushort ReplyTypeOffsetData = 1;
    public const ushort ReplyTypeOffsetHole = 2;
    public const ushort ReplyTypeBlockStatus = 5;
    public const ushort ReplyTypeError = (1 << 15) | 1;
    public const ushort ReplyTypeErrorOffset = (1 << 15) | 2;

    // ---- metadata contexts ----------------------------------------------------------------

    public const string BaseAllocation = "base:allocation";
    public const string DirtyBitmapPrefix = "qemu:dirty-bitmap:";

    /// <summary>base:allocation: the extent is not allocated.</summary>
    public const uint StateHole = 1 << 0;

    /// <summary>base:allocation: the extent reads as zeroes.</summary>
    public const uint StateZero = 1 << 1;

    /// <summary>qemu:dirty-bitmap:NAME: the extent is dirty.</summary>
    public const uint StateDirty = 1 << 0;

    // ---- errors (errno values the protocol allows) ----------------------------------------

    public const uint EPERM = 1;
    public const uint EIO = 5;
    public const uint ENOMEM = 12;
    public const uint EINVAL = 22;
    public const uint ENOSPC = 28;
    public const uint EOVERFLOW = 75;
    public const uint ENOTSUP = 95;
    public const uint ESHUTDOWN = 108;

    // ---- limits ---------------------------------------------------------------------------

    /// <summary>Largest READ/WRITE payload either side accepts (QEMU's NBD_MAX_BUFFER_SIZE).</summary>
    public const int MaxPayload = 32 * 1024 * 1024;

    /// <summary>Longest string (export name, query, message) the spec allows.</summary>
    public const int MaxString = 4096;

    public const int DefaultPort = 10809;
}
