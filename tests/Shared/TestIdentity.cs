namespace BlockMirror.Tests.Shared;

/// <summary>A certificate and key files, and the CA that signed them (<see cref="TestCertificates"/>).</summary>
internal sealed record TestIdentity(string CertificatePath, string KeyPath, TestCa Ca);
