namespace BlockMirror.Tests.Shared;

/// <summary>A CA's certificate and key files (<see cref="TestCertificates"/>).</summary>
internal sealed record TestCa(string CertificatePath, string KeyPath);
