# capwin bootstrap for a Windows Kubernetes worker (Windows PowerShell 5.1).
# Rendered by capwin; runs from cloudbase-init's runcmd and is safe to run again.
# Every decision is made by the renderer and arrives in the parameters file next to this script
# (capwin-payload src/node.rs); this file only performs, in small functions:
#   Step-*    changes the node; its first statement is the re-run guard
#             `if (Test-... ) { ... return }`, so a second run changes nothing that is done;
#   Assert-*  only reads, and throws when the node is not as required;
#   Test-*    only reads, and answers $true or $false.
# Secrets (the bootstrap token in the join configuration, the domain join account) are read only
# by the Read-*/Register-TokenRedaction functions and never reach the log or the serial console.
# Exit codes: 0 joined (or already joined); 10-99 the failing step (see $Steps); 1003 only from
# Exit-ForReboot (cloudbase-init reboots and runs the user data again).
param(
    [string]$ParamsPath = 'C:\run\capwin\bootstrap.json',
    [ValidateSet('Join', 'MetadataRoutes')]
    [string]$Mode = 'Join'
)

Set-StrictMode -Version 2.0
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
[Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor [Net.SecurityProtocolType]::Tls12

$Steps = @{
    'preamble'   = 10
    'acl'        = 11
    'host'       = 20
    'domain'     = 21
    'binaries'   = 30
    'version'    = 31
    'containerd' = 40
    'network'    = 50
    'nodeip'     = 51
    'nodename'   = 52
    'routes'     = 53
    'kubelet'    = 60
    'users'      = 61
    'gmsa'       = 62
    'prekubeadm' = 65
    'apiserver'  = 70
    'join'       = 80
    'postjoin'   = 90
    'postkubeadm' = 91
}

$RunDir = 'C:\run\capwin'
$StateDir = 'C:\run\capwin\state'
$ClusterApiDir = 'C:\run\cluster-api'
$KubeadmDir = 'C:\run\kubeadm'
$LogDir = 'C:\var\log\capwin'
$Sentinel = 'C:\run\cluster-api\bootstrap-success.complete'
$FailureFile = 'C:\run\cluster-api\bootstrap-failure.json'
$JoinConfig = 'C:\run\kubeadm\kubeadm-join-config.yaml'
$JoinTemplate = 'C:\run\kubeadm\kubeadm-join-config.template'
$KubeletConf = 'C:\etc\kubernetes\kubelet.conf'
$KubeletFlagsEnv = 'C:\var\lib\kubelet\kubeadm-flags.env'
$KubeletOriginalPath = 'C:\run\capwin\state\kubelet-imagepath.orig'
$DomainJoinMarker = 'C:\run\capwin\state\domain-join.boot'
$ContainerdConfig = 'C:\Program Files\containerd\config.toml'
$ContainerdConfD = 'C:\Program Files\containerd\conf.d'
$CcgClasses = 'HKLM:\SYSTEM\CurrentControlSet\Control\CCG\COMClasses'
$Utf8 = New-Object System.Text.UTF8Encoding($false)
$script:CurrentStep = 'preamble'
$script:SerialPort = $null
$script:Redact = @()
$script:RestartContainerd = $false
$script:NodeName = ''
$script:NodeIP = ''
$script:ProviderID = ''
$script:ExitCode = 0

# --------------------------------------------------------------------------------------------
# Logging and progress

function Write-Serial {
    param([string]$Line)
    if ($null -eq $script:SerialPort) {
        return
    }
    try {
        $port = New-Object System.IO.Ports.SerialPort($script:SerialPort, 115200, 'None', 8, 'One')
        $port.Open()
        $port.WriteLine($Line)
        $port.Close()
        return
    } catch {
        # cloudbase-init holds its logging port for its whole run (COM ports open exclusively);
        # it logs this script's output to that port when the script exits, so print the record.
    }
    Write-Host $Line
}

function Protect-Text {
    param([string]$Text)
    foreach ($secret in $script:Redact) {
        if ($secret) {
            $Text = $Text.Replace($secret, '<redacted>')
        }
    }
    return $Text
}

function Write-Log {
    param([string]$Message)
    # Write-Host, not Write-Output: log lines must never mix into a function's return value.
    $line = '{0} [{1}] {2}' -f (Get-Date).ToUniversalTime().ToString('yyyy-MM-ddTHH:mm:ssZ'), $script:CurrentStep, (Protect-Text $Message)
    Write-Host $line
}

function Send-Progress {
    param([string]$Status, [string]$Message = '')
    $record = [ordered]@{ step = $script:CurrentStep; status = $Status; message = (Protect-Text $Message) }
    Write-Serial ('CAPWIN-BOOTSTRAP ' + ($record | ConvertTo-Json -Compress))
}

function Enter-Step {
    param([string]$Name)
    $script:CurrentStep = $Name
    Write-Log 'begin'
    Send-Progress 'running'
}

function Complete-Failure {
    param($ErrorRecord)
    $code = $Steps[$script:CurrentStep]
    if ($null -eq $code) {
        $code = 99
    }
    $message = Protect-Text ([string]$ErrorRecord.Exception.Message)
    Write-Log ('FAILED (exit {0}): {1}' -f $code, $message)
    Write-Log (Protect-Text ([string]$ErrorRecord.ScriptStackTrace))
    $failure = [ordered]@{
        step = $script:CurrentStep
        code = $code
        message = $message
        time = (Get-Date).ToUniversalTime().ToString('yyyy-MM-ddTHH:mm:ssZ')
        log = $script:LogFile
    }
    try {
        [IO.File]::WriteAllText($FailureFile, ($failure | ConvertTo-Json), $Utf8)
    } catch {
        Write-Log ('could not write the failure file: ' + $_.Exception.Message)
    }
    Send-Progress 'failed' $message
    return $code
}

# capwin:if domainJoin
function Exit-ForReboot {
    # The only path that asks cloudbase-init for a reboot: 1003 reboots and runs the user data
    # again at the next boot (cloudbase-init plugins/common/execcmd.py), where the step's guard
    # finds the work done and the bootstrap carries on.
    param([string]$Reason)
    Write-Log ('{0}; asking cloudbase-init to reboot and run the bootstrap again' -f $Reason)
    Send-Progress 'running' $Reason
    Stop-Transcript | Out-Null
    exit 1003
}

function Read-DomainJoinCredential {
    $account = [IO.File]::ReadAllText($P.domainJoin.credentialsPath, $Utf8) | ConvertFrom-Json
    $script:Redact += @([string]$account.password)
    $secure = ConvertTo-SecureString -String ([string]$account.password) -AsPlainText -Force
    return (New-Object System.Management.Automation.PSCredential([string]$account.username, $secure))
}

function Get-BootId {
    return (Get-CimInstance -ClassName Win32_OperatingSystem).LastBootUpTime.ToUniversalTime().ToString('o')
}

function Test-DomainJoinComplete {
    # Joined, and rebooted since the join (the join takes effect at the reboot).
    if ($null -eq $P.domainJoin) {
        return $true
    }
    if (-not (Test-DomainMember $P.domainJoin.domain)) {
        return $false
    }
    if (-not (Test-Path -LiteralPath $DomainJoinMarker)) {
        return $true
    }
    return ([IO.File]::ReadAllText($DomainJoinMarker, $Utf8) -ne (Get-BootId))
}

function Remove-DomainJoinAccount {
    if ($null -eq $P.domainJoin) {
        return
    }
    Remove-Item -LiteralPath $P.domainJoin.credentialsPath, $DomainJoinMarker -Force -ErrorAction SilentlyContinue
}

function Step-DomainJoin {
    if (Test-DomainJoinComplete) {
        Remove-DomainJoinAccount
        return
    }
    $domain = $P.domainJoin.domain
    if (Test-DomainMember $domain) {
        Exit-ForReboot ('joined {0} earlier in this boot' -f $domain)
    }
    $credential = Read-DomainJoinCredential
    $join = @{ DomainName = $domain; Credential = $credential; Force = $true }
    if ($P.domainJoin.organizationalUnit) {
        $join['OUPath'] = $P.domainJoin.organizationalUnit
    }
    Add-Computer @join
    [IO.File]::WriteAllText($DomainJoinMarker, (Get-BootId), $Utf8)
    Exit-ForReboot ('joined {0}' -f $domain)
}
# capwin:end

# --------------------------------------------------------------------------------------------
# Helpers

function Invoke-Native {
    # Runs a program and throws when it exits non-zero, with its output in the log.
    param([string]$FilePath, [string[]]$ArgumentList)
    # Windows PowerShell 5.1 turns a native program's stderr line into a terminating error when
    # the preference is Stop (kubeadm logs to stderr); judge by the exit code instead.
    $ErrorActionPreference = 'Continue'
    $output = & $FilePath @ArgumentList 2>&1 | ForEach-Object { Protect-Text ([string]$_) }
    $code = $LASTEXITCODE
    foreach ($l in $output) {
        Write-Log ('  ' + $l)
    }
    if ($code -ne 0) {
        throw ('{0} exited with code {1}' -f $FilePath, $code)
    }
    return $output
}

# capwin:if externalNetwork
function Invoke-Hns {
    # HNS's own call (vmcompute.dll HNSCall), as microsoft/SDN hns.psm1 Invoke-HNSRequest makes
    # it: the in-box HostNetworkingService module can list networks but not create them.
    param([string]$Method, [string]$Path, [string]$Request = '')
    if (-not ('Capwin.Hns' -as [type])) {
        Add-Type -Namespace Capwin -Name Hns -MemberDefinition '[DllImport("vmcompute.dll")] public static extern void HNSCall([MarshalAs(UnmanagedType.LPWStr)] string method, [MarshalAs(UnmanagedType.LPWStr)] string path, [MarshalAs(UnmanagedType.LPWStr)] string request, [MarshalAs(UnmanagedType.LPWStr)] out string response);'
    }
    $response = ''
    [Capwin.Hns]::HNSCall($Method, $Path, $Request, [ref]$response)
    $result = $response | ConvertFrom-Json
    if (-not $result.Success) {
        throw ('HNS {0} {1} failed: {2}' -f $Method, $Path, $result.Error)
    }
    return $result.Output
}

function ConvertTo-IPv4Number {
    param([string]$Address)
    $bytes = ([Net.IPAddress]::Parse($Address)).GetAddressBytes()
    [Array]::Reverse($bytes)
    return [uint64][BitConverter]::ToUInt32($bytes, 0)
}

function Test-InPrefix {
    param([string]$Address, [string]$Network, [int]$Length)
    $mask = [uint64]0
    if ($Length -gt 0) {
        $mask = ([uint64]4294967295 -shl (32 - $Length)) -band [uint64]4294967295
    }
    return (((ConvertTo-IPv4Number $Address) -band $mask) -eq ((ConvertTo-IPv4Number $Network) -band $mask))
}

function Test-ExternalNetwork {
    $n = $P.externalNetwork
    if ($null -eq $n) {
        return $true
    }
    return (@(Invoke-Hns 'GET' '/networks' | Where-Object { $_.Name -eq $n.name }).Count -gt 0)
}

function Assert-PrefixFree {
    # The External network's prefix must not meet the host's own networks either.
    param([string]$Prefix)
    $network = $Prefix.Split('/')[0]
    $length = [int]$Prefix.Split('/')[1]
    foreach ($a in @(Get-NetIPAddress -AddressFamily IPv4 -ErrorAction SilentlyContinue | Where-Object { $_.PrefixOrigin -ne 'WellKnown' })) {
        if ((Test-InPrefix $a.IPAddress $network $length) -or (Test-InPrefix $network $a.IPAddress ([int]$a.PrefixLength))) {
            throw ('the External network prefix {0} overlaps the host address {1}/{2}' -f $Prefix, $a.IPAddress, $a.PrefixLength)
        }
    }
}

function Step-ExternalNetwork {
    # flannel misbehaves when it creates the first HNS network itself; a throw-away External
    # network makes the vSwitch once, up front (the connectivity blip happens here).
    if (Test-ExternalNetwork) {
        return
    }
    $n = $P.externalNetwork
    Assert-PrefixFree $n.addressPrefix
    $route = Get-DefaultRoute
    if ($null -eq $route) {
        throw 'no IPv4 default route: cannot tell which adapter the vSwitch belongs on'
    }
    $adapter = Get-NetAdapter -InterfaceIndex $route.ifIndex
    $subnet = [ordered]@{ AddressPrefix = $n.addressPrefix; GatewayAddress = $n.gateway }
    if ($null -ne $n.vsid) {
        $subnet['Policies'] = @(@{ Type = 'VSID'; VSID = [int]$n.vsid })
    }
    $network = [ordered]@{ Type = $n.type; Name = $n.name; NetworkAdapterName = $adapter.Name; Subnets = @($subnet) }
    $ipBefore = Get-PrimaryIPv4
    Write-Log ('creating the {0} HNS network {1} ({2}) on {3}' -f $n.type, $n.name, $n.addressPrefix, $adapter.Name)
    Invoke-Hns 'POST' '/networks' ($network | ConvertTo-Json -Depth 10) | Out-Null
    Wait-Until -TimeoutSeconds 60 -What 'the node IP to return after the vSwitch was created' -Condition { (Get-PrimaryIPv4) -eq $ipBefore }
}
# capwin:end

function Invoke-WithRetry {
    param([scriptblock]$Action, [int]$Attempts = 10, [int]$DelaySeconds = 5, [string]$What = 'operation')
    for ($i = 1; $i -le $Attempts; $i++) {
        try {
            return (& $Action)
        } catch {
            if ($i -eq $Attempts) {
                throw
            }
            Write-Log ('{0} failed (attempt {1}/{2}): {3}; retrying in {4}s' -f $What, $i, $Attempts, $_.Exception.Message, $DelaySeconds)
            Start-Sleep -Seconds $DelaySeconds
        }
    }
}

function Wait-Until {
    param([scriptblock]$Condition, [int]$TimeoutSeconds, [string]$What)
    $deadline = (Get-Date).AddSeconds($TimeoutSeconds)
    while ((Get-Date) -lt $deadline) {
        if (& $Condition) {
            return
        }
        Start-Sleep -Seconds 2
    }
    throw ('timed out after {0}s waiting for {1}' -f $TimeoutSeconds, $What)
}

function Test-FileSha256 {
    param([string]$Path, [string]$Sha256)
    if (-not (Test-Path -LiteralPath $Path)) {
        return $false
    }
    return ((Get-FileHash -Algorithm SHA256 -LiteralPath $Path).Hash.ToLowerInvariant() -eq $Sha256)
}

function Save-VerifiedDownload {
    # Downloads with retries to a temporary file and checks its SHA-256 before handing it back.
    param([string]$Url, [string]$Sha256, [string]$Destination)
    $tmp = $Destination + '.download'
    Invoke-WithRetry -What ('download ' + $Url) -Action {
        Invoke-Native 'curl.exe' @('--fail', '--silent', '--show-error', '--location', '--retry', '10', '--retry-delay', '5', '--output', $tmp, $Url) | Out-Null
    } | Out-Null
    if (-not (Test-FileSha256 $tmp $Sha256)) {
        Remove-Item -LiteralPath $tmp -Force
        throw ('checksum mismatch for {0}: expected {1}' -f $Url, $Sha256)
    }
    Move-Item -LiteralPath $tmp -Destination $Destination -Force
}

function Test-PrivateAcl {
    # Only SYSTEM and Administrators, nothing inherited.
    param([string]$Path)
    if (-not (Test-Path -LiteralPath $Path)) {
        return $true
    }
    $acl = Get-Acl -LiteralPath $Path
    if (-not $acl.AreAccessRulesProtected) {
        return $false
    }
    foreach ($rule in $acl.Access) {
        $sid = $rule.IdentityReference.Translate([Security.Principal.SecurityIdentifier]).Value
        if ($sid -ne 'S-1-5-18' -and $sid -ne 'S-1-5-32-544') {
            return $false
        }
    }
    return $true
}

function Set-PrivateAcl {
    # SYSTEM and Administrators only, by SID so it works on every display language.
    param([string]$Path)
    if (-not (Test-Path -LiteralPath $Path)) {
        return
    }
    if ((Get-Item -LiteralPath $Path).PSIsContainer) {
        Invoke-Native 'icacls.exe' @($Path, '/inheritance:r', '/grant:r', '*S-1-5-18:(OI)(CI)F', '*S-1-5-32-544:(OI)(CI)F', '/T', '/C', '/Q') | Out-Null
    } else {
        Invoke-Native 'icacls.exe' @($Path, '/inheritance:r', '/grant:r', '*S-1-5-18:F', '*S-1-5-32-544:F', '/C', '/Q') | Out-Null
    }
}

function Test-StateMarker {
    param([string]$Name, [string]$Value)
    $path = Join-Path $StateDir $Name
    if (-not (Test-Path -LiteralPath $path)) {
        return $false
    }
    return ([IO.File]::ReadAllText($path, $Utf8) -eq $Value)
}

function Set-StateMarker {
    param([string]$Name, [string]$Value)
    [IO.File]::WriteAllText((Join-Path $StateDir $Name), $Value, $Utf8)
}

# capwin:if ccgPlugin
function Enable-TokenPrivilege {
    # SeTakeOwnershipPrivilege and SeRestorePrivilege are held but disabled by default
    # (image-builder roles/gmsa install-gmsa-keyvault-plugin.ps1, from AgentBaker).
    param([string]$Privilege)
    if (-not ('Capwin.Privilege' -as [type])) {
        Add-Type -Namespace Capwin -Name Privilege -MemberDefinition @'
[DllImport("advapi32.dll", SetLastError = true)] static extern bool OpenProcessToken(IntPtr process, int access, out IntPtr token);
[DllImport("advapi32.dll", SetLastError = true)] static extern bool LookupPrivilegeValue(string host, string name, out long luid);
[DllImport("advapi32.dll", SetLastError = true)] static extern bool AdjustTokenPrivileges(IntPtr token, bool disableAll, ref TokenPrivilege state, int length, IntPtr previous, IntPtr returnLength);
[DllImport("kernel32.dll")] static extern IntPtr GetCurrentProcess();
[StructLayout(LayoutKind.Sequential, Pack = 1)] struct TokenPrivilege { public int Count; public long Luid; public int Attributes; }
public static bool Enable(string name) {
    IntPtr token;
    if (!OpenProcessToken(GetCurrentProcess(), 0x28, out token)) { return false; }
    TokenPrivilege state = new TokenPrivilege();
    state.Count = 1;
    state.Attributes = 2;
    if (!LookupPrivilegeValue(null, name, out state.Luid)) { return false; }
    return AdjustTokenPrivileges(token, false, ref state, 0, IntPtr.Zero, IntPtr.Zero) && Marshal.GetLastWin32Error() == 0;
}
'@
    }
    if (-not [Capwin.Privilege]::Enable($Privilege)) {
        throw ('could not enable {0}' -f $Privilege)
    }
}

function Set-RegistryValue {
    # Creates the key when missing (never New-Item -Force on a key: that empties an existing one).
    param([string]$Key, [string]$Name, $Value, [string]$Type = 'String')
    if (-not (Test-Path -LiteralPath $Key)) {
        New-Item -Path $Key | Out-Null
    }
    if ($Name -eq '(default)') {
        Set-Item -LiteralPath $Key -Value $Value
    } else {
        New-ItemProperty -LiteralPath $Key -Name $Name -Value $Value -PropertyType $Type -Force | Out-Null
    }
}

function Test-CcgPluginInstalled {
    $plugin = $P.gmsa.plugin
    if ($null -eq $plugin) {
        return $true
    }
    if (-not (Test-FileSha256 $plugin.dllPath $plugin.sha256)) {
        return $false
    }
    if (-not (Test-Path -LiteralPath (Join-Path $CcgClasses $plugin.clsid))) {
        return $false
    }
    $server = Get-ItemProperty -LiteralPath ('HKLM:\SOFTWARE\Classes\CLSID\{0}\InprocServer32' -f $plugin.clsid) -ErrorAction SilentlyContinue
    return ($null -ne $server -and @($server.PSObject.Properties | Where-Object { $_.Name -eq '(default)' -and $_.Value -eq $plugin.dllPath }).Count -eq 1)
}

function Register-CcgComClass {
    # The class runs out of process in the COM DLL surrogate, as Microsoft's registerplugin.reg
    # (microsoft/Azure-Key-Vault-Plugin-gMSA) registers the Key Vault plugin.
    param($Plugin)
    $permission = [Convert]::FromBase64String($Plugin.comPermission)
    $appKey = 'HKLM:\SOFTWARE\Classes\AppID\' + $Plugin.appId
    Set-RegistryValue $appKey 'DllSurrogate' ''
    Set-RegistryValue $appKey 'AccessPermission' $permission 'Binary'
    Set-RegistryValue $appKey 'LaunchPermission' $permission 'Binary'
    $classKey = 'HKLM:\SOFTWARE\Classes\CLSID\' + $Plugin.clsid
    Set-RegistryValue $classKey 'AppID' $Plugin.appId
    Set-RegistryValue ($classKey + '\InprocServer32') '(default)' $Plugin.dllPath
    Set-RegistryValue ($classKey + '\InprocServer32') 'ThreadingModel' 'Both'
    $interfaceKey = 'HKLM:\SOFTWARE\Classes\Interface\' + $Plugin.interfaceIid
    Set-RegistryValue $interfaceKey '(default)' 'ICcgDomainAuthCredentials'
    Set-RegistryValue ($interfaceKey + '\ProxyStubClsid32') '(default)' $Plugin.proxyStubClsid
}

function Register-CcgPluginClsid {
    # CCG\COMClasses belongs to TrustedInstaller: take ownership, add the plugin's key, and put
    # owner and ACL back exactly as they were (image-builder roles/gmsa, AgentBaker).
    param([string]$Clsid)
    Enable-TokenPrivilege 'SeTakeOwnershipPrivilege'
    Enable-TokenPrivilege 'SeRestorePrivilege'
    $path = 'SYSTEM\CurrentControlSet\Control\CCG\COMClasses'
    $tree = [Microsoft.Win32.RegistryKeyPermissionCheck]::ReadWriteSubTree
    $rights = [System.Security.AccessControl.RegistryRights]
    $sections = [System.Security.AccessControl.AccessControlSections]'Owner, Access'
    $admins = New-Object System.Security.Principal.SecurityIdentifier('S-1-5-32-544')
    $key = [Microsoft.Win32.Registry]::LocalMachine.OpenSubKey($path, $tree, $rights::ReadPermissions)
    $original = $key.GetAccessControl().GetSecurityDescriptorSddlForm($sections)
    $key.Close()
    try {
        $key = [Microsoft.Win32.Registry]::LocalMachine.OpenSubKey($path, $tree, $rights::TakeOwnership)
        $acl = $key.GetAccessControl()
        $acl.SetOwner($admins)
        $key.SetAccessControl($acl)
        $key.Close()
        $key = [Microsoft.Win32.Registry]::LocalMachine.OpenSubKey($path, $tree, $rights::ChangePermissions)
        $acl = $key.GetAccessControl()
        $acl.AddAccessRule((New-Object System.Security.AccessControl.RegistryAccessRule($admins, $rights::FullControl, 'Allow')))
        $key.SetAccessControl($acl)
        $key.Close()
        $key = [Microsoft.Win32.Registry]::LocalMachine.OpenSubKey($path, $true)
        $key.CreateSubKey($Clsid).Close()
        $key.Close()
    } finally {
        $key = [Microsoft.Win32.Registry]::LocalMachine.OpenSubKey($path, $tree, ($rights::ChangePermissions -bor $rights::TakeOwnership))
        $acl = $key.GetAccessControl()
        $acl.SetSecurityDescriptorSddlForm($original, $sections)
        $key.SetAccessControl($acl)
        $key.Close()
    }
}

function Step-CcgPlugin {
    if (Test-CcgPluginInstalled) {
        return
    }
    $plugin = $P.gmsa.plugin
    Save-VerifiedDownload -Url $plugin.url -Sha256 $plugin.sha256 -Destination $plugin.dllPath
    Register-CcgComClass $plugin
    Register-CcgPluginClsid $plugin.clsid
}
# capwin:end

function Test-ServiceRunning {
    param([string]$Name)
    $svc = Get-Service -Name $Name -ErrorAction SilentlyContinue
    return ($null -ne $svc -and $svc.Status -eq 'Running')
}

function Get-ContainerdVersionLine {
    return [string](Invoke-Native 'C:\Program Files\containerd\containerd.exe' @('--version') | Select-Object -Last 1)
}

function Get-Ec2Metadata {
    # EC2 instance metadata: IMDSv2 when it answers, IMDSv1 otherwise.
    param([string]$Path)
    $headers = @{}
    try {
        $token = Invoke-RestMethod -UseBasicParsing -Method Put -Uri 'http://169.254.169.254/latest/api/token' -Headers @{ 'X-aws-ec2-metadata-token-ttl-seconds' = '300' } -TimeoutSec 5
        $headers['X-aws-ec2-metadata-token'] = $token
    } catch {
        Write-Log 'IMDSv2 token unavailable, using IMDSv1'
    }
    $value = Invoke-WithRetry -What ('EC2 metadata ' + $Path) -Action {
        Invoke-RestMethod -UseBasicParsing -Uri ('http://169.254.169.254/latest/meta-data/' + $Path) -Headers $headers -TimeoutSec 10
    }
    return ([string]$value).Trim()
}

function Get-AzureCompute {
    return (Invoke-WithRetry -What 'Azure instance metadata' -Action {
        Invoke-RestMethod -UseBasicParsing -Uri 'http://169.254.169.254/metadata/instance/compute?api-version=2021-02-01' -Headers @{ Metadata = 'true' } -TimeoutSec 10
    })
}

function Get-DefaultRoute {
    return (Get-NetRoute -DestinationPrefix '0.0.0.0/0' -AddressFamily IPv4 -ErrorAction SilentlyContinue | Sort-Object -Property RouteMetric | Select-Object -First 1)
}

function Get-PrimaryIPv4 {
    # The IPv4 address of the interface that owns the default route.
    $route = Get-DefaultRoute
    if ($null -eq $route) {
        return $null
    }
    $address = Get-NetIPAddress -InterfaceIndex $route.ifIndex -AddressFamily IPv4 -ErrorAction SilentlyContinue | Where-Object { $_.PrefixOrigin -ne 'WellKnown' } | Select-Object -First 1
    if ($null -eq $address) {
        return $null
    }
    return $address.IPAddress
}

function Resolve-Placeholders {
    param([string]$Text)
    return $Text.Replace('@@CAPWIN_NODE_NAME@@', $script:NodeName).Replace('@@CAPWIN_NODE_IP@@', $script:NodeIP).Replace('@@CAPWIN_PROVIDER_ID@@', $script:ProviderID)
}

function Invoke-UserCommands {
    param([string[]]$Commands, [string]$Field)
    $index = 0
    foreach ($command in $Commands) {
        Write-Log ('{0}[{1}]' -f $Field, $index)
        $global:LASTEXITCODE = 0
        & ([scriptblock]::Create($command))
        if ($LASTEXITCODE -ne 0) {
            throw ('{0}[{1}] ended with exit code {2}' -f $Field, $index, $LASTEXITCODE)
        }
        $index++
    }
}

# --------------------------------------------------------------------------------------------
# Secret readers: the only functions that read the join configuration or the join account.

function Register-TokenRedaction {
    if (-not (Test-Path -LiteralPath $JoinConfig)) {
        return
    }
    $tokenMatch = [regex]::Match([IO.File]::ReadAllText($JoinConfig, $Utf8), '([a-z0-9]{6})\.([a-z0-9]{16})')
    if ($tokenMatch.Success) {
        $script:Redact += @($tokenMatch.Groups[2].Value, $tokenMatch.Value)
    }
}

function Read-JoinConfiguration {
    return [IO.File]::ReadAllText($JoinConfig, $Utf8)
}

function Read-JoinTemplate {
    return [IO.File]::ReadAllText($JoinTemplate, $Utf8)
}

# --------------------------------------------------------------------------------------------
# Preamble and host checks

function Read-Parameters {
    $script:P = [IO.File]::ReadAllText($ParamsPath, $Utf8) | ConvertFrom-Json
}

function Test-PrivateAcls {
    foreach ($path in (@($KubeadmDir, $RunDir, $LogDir) + @($P.privateFiles))) {
        if ($path -and -not (Test-PrivateAcl $path)) {
            return $false
        }
    }
    return $true
}

function Step-PrivateAcl {
    # Secret-bearing files first: the join configuration holds the bootstrap token.
    if (Test-PrivateAcls) {
        return
    }
    foreach ($path in (@($KubeadmDir, $RunDir, $LogDir) + @($P.privateFiles))) {
        if ($path) {
            Set-PrivateAcl $path
        }
    }
}

function Test-Joined {
    return (Test-Path -LiteralPath $Sentinel)
}

function Assert-Elevated {
    $principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
    if (-not $principal.IsInRole([Security.Principal.SecurityIdentifier]'S-1-5-32-544')) {
        throw 'the bootstrap must run elevated (member of Administrators)'
    }
}

function Assert-WindowsBuild {
    $build = [int](Get-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion').CurrentBuildNumber
    $accepted = @($P.windows.acceptedBuilds | ForEach-Object { [int]$_ })
    if ($accepted -notcontains $build) {
        throw ('the image is Windows build {0}, which capwin does not accept for Windows Server {1} (accepted builds: {2})' -f $build, $P.windows.version, ($accepted -join ', '))
    }
}

function Assert-WindowsFeature {
    param([string]$Name, [string]$Why)
    if ((Get-WindowsOptionalFeature -Online -FeatureName $Name).State -ne 'Enabled') {
        throw ('the Windows feature {0} is not enabled in the image; {1}' -f $Name, $Why)
    }
}

function Assert-ImageServices {
    foreach ($name in @('containerd', 'kubelet')) {
        if ($null -eq (Get-Service -Name $name -ErrorAction SilentlyContinue)) {
            throw ('the image has no {0} service' -f $name)
        }
    }
    if (-not (Test-Path -LiteralPath 'C:\k\kubeadm.exe')) {
        throw 'C:\k\kubeadm.exe is missing from the image'
    }
}

# --------------------------------------------------------------------------------------------
# Node identity

function Assert-NodeName {
    # Sets $script:NodeName and $script:ProviderID from the plan and the instance metadata.
    $plan = $P.nodeName
    $compute = $null
    if ($P.cloud -eq 'azure') {
        $compute = Get-AzureCompute
    }
    if ($plan.source -eq 'fixed') {
        $name = [string]$plan.value
    } elseif ($plan.source -eq 'azure-vm-name') {
        $name = ([string]$compute.name).ToLowerInvariant()
    } else {
        $name = (Get-Ec2Metadata 'local-hostname').ToLowerInvariant()
    }
    if ($name -notmatch '^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$') {
        throw ('CAPWIN-NODE-NAME: {0} is not a valid node name (RFC 1123, at most 63 characters)' -f $name)
    }
    if ($plan.requireVmName) {
        $vm = ([string]$compute.name).ToLowerInvariant()
        $computer = ([string]$compute.osProfile.computerName).ToLowerInvariant()
        if ($name -ne $vm -or $computer -ne $vm) {
            throw ('CAPWIN-NODE-NAME: node name {0}, VM name {1} and computer name {2} must be equal: cloud-provider-azure only initialises Nodes named after their VM (kubernetes/kubernetes#79232)' -f $name, $vm, $computer)
        }
        if ($env:COMPUTERNAME.ToLowerInvariant() -ne $computer) {
            if ($null -ne $P.domainJoin) {
                throw ('CAPWIN-NODE-NAME: Windows still has the name {0}, not {1}: a domain join now would create the wrong computer account' -f $env:COMPUTERNAME, $computer)
            }
            Write-Log ('Windows still has the name {0}; cloudbase-init sets {1} later, the Node is {2} either way' -f $env:COMPUTERNAME, $computer, $name)
        }
    }
    $id = ''
    if ($P.providerId -eq 'azure') {
        $id = 'azure:///subscriptions/{0}/resourceGroups/{1}/providers/Microsoft.Compute/virtualMachines/{2}' -f $compute.subscriptionId, ([string]$compute.resourceGroupName).ToLowerInvariant(), $compute.name
    } elseif ($P.providerId -eq 'aws') {
        $id = 'aws:///{0}/{1}' -f (Get-Ec2Metadata 'placement/availability-zone'), (Get-Ec2Metadata 'instance-id')
    }
    if ($id -and $id -notmatch '^(aws|azure):///[A-Za-z0-9/._()-]+$') {
        throw ('the instance metadata gave an unusable provider ID: {0}' -f $id)
    }
    $script:NodeName = $name
    $script:ProviderID = $id
    Write-Log ('node name {0}; computer name {1}; provider ID {2}' -f $name, $env:COMPUTERNAME, $id)
}

function Assert-NodeIP {
    Wait-Until -TimeoutSeconds 120 -What 'an IPv4 address on the default-route interface' -Condition { $null -ne (Get-PrimaryIPv4) }
    $script:NodeIP = [string](Get-PrimaryIPv4)
    [void][Net.IPAddress]::Parse($script:NodeIP)
    Write-Log ('node IP {0}' -f $script:NodeIP)
}

# --------------------------------------------------------------------------------------------
# Active Directory

function Test-DomainMember {
    param([string]$Domain)
    $cs = Get-CimInstance -ClassName Win32_ComputerSystem
    return ($cs.PartOfDomain -and ([string]$cs.Domain).ToLowerInvariant() -eq $Domain)
}

# --------------------------------------------------------------------------------------------
# Binaries and containerd

function Test-KubernetesBinaries {
    foreach ($bin in @($P.binaries)) {
        if (-not (Test-FileSha256 (Join-Path 'C:\k' ($bin.name + '.exe')) $bin.sha256)) {
            return $false
        }
    }
    return $true
}

function Step-KubernetesBinaries {
    if (Test-KubernetesBinaries) {
        return
    }
    Stop-Service -Name kubelet -Force -ErrorAction SilentlyContinue
    foreach ($bin in @($P.binaries)) {
        $target = Join-Path 'C:\k' ($bin.name + '.exe')
        if (-not (Test-FileSha256 $target $bin.sha256)) {
            Write-Log ('replacing {0} from {1}' -f $target, $bin.url)
            Save-VerifiedDownload -Url $bin.url -Sha256 $bin.sha256 -Destination $target
        }
    }
}

function Assert-KubeadmVersion {
    $kubeadmVersion = ([string](Invoke-Native 'C:\k\kubeadm.exe' @('version', '-o', 'short') | Select-Object -Last 1)).Trim()
    if ($kubeadmVersion -ne $P.kubernetesVersion) {
        throw ('kubeadm in the image is {0} but the Machine asks for {1}' -f $kubeadmVersion, $P.kubernetesVersion)
    }
}

# capwin:if containerdDownload
function Test-ContainerdRelease {
    $dl = $P.containerd.download
    if ($null -eq $dl) {
        return $true
    }
    return (Get-ContainerdVersionLine).Contains(' v' + $dl.version + ' ')
}

function Step-ContainerdRelease {
    if (Test-ContainerdRelease) {
        return
    }
    $dl = $P.containerd.download
    $tarball = Join-Path $RunDir 'containerd.tar.gz'
    $unpack = Join-Path $RunDir 'containerd-unpack'
    Save-VerifiedDownload -Url $dl.url -Sha256 $dl.sha256 -Destination $tarball
    Stop-Service -Name kubelet -Force -ErrorAction SilentlyContinue
    Stop-Service -Name containerd -Force
    New-Item -ItemType Directory -Force -Path $unpack | Out-Null
    Invoke-Native 'tar.exe' @('-xzf', $tarball, '-C', $unpack) | Out-Null
    Copy-Item -Path (Join-Path $unpack 'bin\*') -Destination 'C:\Program Files\containerd' -Force
    Remove-Item -LiteralPath $unpack, $tarball -Recurse -Force
    $script:RestartContainerd = $true
}
# capwin:end

# capwin:if hyperV
function Assert-HyperVCapable {
    # The Hyper-V role and its hypervisor: image-builder's disable_hypervisor images turn
    # Microsoft-Hyper-V-Online off, and every cloud VM reports a hypervisor (the host's).
    if ($null -eq $P.containerd.hyperV) {
        return
    }
    $why = 'Hyper-V isolation needs an image built with the hypervisor and a VM size with nested virtualisation'
    Assert-WindowsFeature 'Microsoft-Hyper-V' $why
    Assert-WindowsFeature 'Microsoft-Hyper-V-Online' $why
    if (-not (Test-ServiceRunning 'vmcompute')) {
        throw ('the Host Compute Service (vmcompute) is not running; {0}' -f $why)
    }
}

function Get-HyperVDropIn {
    # The renderer wrote the handler for both config schemas; containerd 1.x reads schema 2.
    if ((Get-ContainerdVersionLine) -match ' v1\.') {
        return $P.containerd.hyperV.dropInV2
    }
    return $P.containerd.hyperV.dropInV3
}

function Test-HyperVRuntime {
    if ($null -eq $P.containerd.hyperV) {
        return $true
    }
    return (Test-FileText (Join-Path $ContainerdConfD 'capwin-hyperv.toml') (Get-HyperVDropIn))
}

function Step-HyperVRuntime {
    if (Test-HyperVRuntime) {
        return
    }
    New-Item -ItemType Directory -Force -Path $ContainerdConfD | Out-Null
    [IO.File]::WriteAllText((Join-Path $ContainerdConfD 'capwin-hyperv.toml'), (Get-HyperVDropIn), $Utf8)
    $script:RestartContainerd = $true
}
# capwin:end

function Test-ContainerdImports {
    if (@($P.containerd.dropIns).Count -eq 0 -and $null -eq $P.containerd.hyperV) {
        return $true
    }
    if (-not (Test-Path -LiteralPath $ContainerdConfig)) {
        throw ('{0} is missing: the image has no containerd configuration to extend' -f $ContainerdConfig)
    }
    return ([IO.File]::ReadAllText($ContainerdConfig, $Utf8) -match 'conf\.d')
}

function Step-ContainerdImports {
    if (Test-ContainerdImports) {
        return
    }
    Write-Log 'config.toml does not import conf.d; adding the import'
    $import = 'imports = ["C:\\Program Files\\containerd\\conf.d\\*.toml"]'
    [IO.File]::WriteAllText($ContainerdConfig, ($import + "`r`n" + [IO.File]::ReadAllText($ContainerdConfig, $Utf8)), $Utf8)
    $script:RestartContainerd = $true
}

function Test-FileText {
    param([string]$Path, [string]$Text)
    return ((Test-Path -LiteralPath $Path) -and [IO.File]::ReadAllText($Path, $Utf8) -eq $Text)
}

function Test-ContainerdDropIns {
    foreach ($name in @($P.containerd.dropIns)) {
        $source = [IO.File]::ReadAllText((Join-Path $RunDir ('containerd-' + $name + '.toml')), $Utf8)
        if (-not (Test-FileText (Join-Path $ContainerdConfD ($name + '.toml')) $source)) {
            return $false
        }
    }
    return $true
}

function Step-ContainerdDropIns {
    if (Test-ContainerdDropIns) {
        return
    }
    New-Item -ItemType Directory -Force -Path $ContainerdConfD | Out-Null
    foreach ($name in @($P.containerd.dropIns)) {
        Copy-Item -LiteralPath (Join-Path $RunDir ('containerd-' + $name + '.toml')) -Destination (Join-Path $ContainerdConfD ($name + '.toml')) -Force
    }
    $script:RestartContainerd = $true
}

function Test-ContainerdProxy {
    $wanted = @($P.containerd.proxyEnvironment)
    if ($wanted.Count -eq 0) {
        return $true
    }
    $current = Get-ItemProperty -LiteralPath 'HKLM:\SYSTEM\CurrentControlSet\Services\containerd' -Name Environment -ErrorAction SilentlyContinue
    return ($null -ne $current -and ((@($current.Environment) -join "`n") -eq ($wanted -join "`n")))
}

function Step-ContainerdProxy {
    # Service-scoped environment: the SCM passes these to containerd only.
    if (Test-ContainerdProxy) {
        return
    }
    Set-ItemProperty -LiteralPath 'HKLM:\SYSTEM\CurrentControlSet\Services\containerd' -Name Environment -Type MultiString -Value ([string[]]@($P.containerd.proxyEnvironment))
    $script:RestartContainerd = $true
}

function Get-ServiceRecoveryState {
    $recovery = $P.serviceRecovery
    return ('{0} {1} {2}' -f (@($recovery.services) -join ','), $recovery.resetSeconds, $recovery.actions)
}

function Step-ServiceRecovery {
    if (Test-StateMarker 'service-recovery' (Get-ServiceRecoveryState)) {
        return
    }
    foreach ($svc in @($P.serviceRecovery.services)) {
        Invoke-Native 'sc.exe' @('failure', $svc, 'reset=', [string]$P.serviceRecovery.resetSeconds, 'actions=', $P.serviceRecovery.actions) | Out-Null
    }
    Set-StateMarker 'service-recovery' (Get-ServiceRecoveryState)
}

function Test-ContainerdCurrent {
    $svc = Get-Service -Name containerd
    return ((-not $script:RestartContainerd) -and $svc.Status -eq 'Running' -and [string]$svc.StartType -eq 'Automatic')
}

function Step-ContainerdRunning {
    if (Test-ContainerdCurrent) {
        return
    }
    Set-Service -Name containerd -StartupType Automatic
    if ($script:RestartContainerd) {
        Restart-Service -Name containerd -Force
    } elseif (-not (Test-ServiceRunning 'containerd')) {
        Start-Service -Name containerd
    }
    $script:RestartContainerd = $false
}

function Assert-ContainerdPipe {
    Wait-Until -TimeoutSeconds 120 -What 'the containerd named pipe' -Condition { Test-Path -LiteralPath '\\.\pipe\containerd-containerd' }
}

# --------------------------------------------------------------------------------------------
# Host networking

function Test-FirewallRules {
    foreach ($rule in @($P.firewallRules)) {
        if ($null -eq (Get-NetFirewallRule -Name $rule.name -ErrorAction SilentlyContinue)) {
            return $false
        }
    }
    return $true
}

function Step-FirewallRules {
    if (Test-FirewallRules) {
        return
    }
    foreach ($rule in @($P.firewallRules)) {
        if ($null -eq (Get-NetFirewallRule -Name $rule.name -ErrorAction SilentlyContinue)) {
            New-NetFirewallRule -Name $rule.name -DisplayName $rule.displayName -Direction Inbound -Protocol $rule.protocol -LocalPort $rule.port -Action Allow | Out-Null
        }
    }
}

function Get-DynamicPortStart {
    $range = Invoke-Native 'netsh.exe' @('int', 'ipv4', 'show', 'dynamicportrange', 'tcp')
    $startMatch = [regex]::Match(($range -join "`n"), ':\s*(\d+)')
    if (-not $startMatch.Success) {
        return $null
    }
    return [int]$startMatch.Groups[1].Value
}

function Test-DynamicPortRange {
    $start = Get-DynamicPortStart
    return ($null -eq $start -or $start -ge [int]$P.dynamicPortRange.minimumStart)
}

function Step-DynamicPortRange {
    # Keep ephemeral ports clear of the NodePort range 30000-32767 (images usually do this).
    if (Test-DynamicPortRange) {
        return
    }
    Invoke-Native 'netsh.exe' @('int', 'ipv4', 'set', 'dynamicportrange', 'tcp', [string]$P.dynamicPortRange.start, [string]$P.dynamicPortRange.count) | Out-Null
}

function Get-MetadataRouteGap {
    # Destinations without a route through the default route's gateway and interface.
    $route = Get-DefaultRoute
    $missing = @()
    foreach ($dest in @($P.metadataRoutes.destinations)) {
        $ok = @(Get-NetRoute -DestinationPrefix ($dest + '/32') -AddressFamily IPv4 -ErrorAction SilentlyContinue | Where-Object { $null -ne $route -and $_.ifIndex -eq $route.ifIndex -and $_.NextHop -eq $route.NextHop })
        if ($ok.Count -eq 0) {
            $missing += $dest
        }
    }
    return $missing
}

function Test-MetadataRoutes {
    if ($null -eq $P.metadataRoutes) {
        return $true
    }
    return (@(Get-MetadataRouteGap).Count -eq 0)
}

function Step-MetadataRoutes {
    # The CNI's vSwitch takes the adapter (and its routes) away; route the metadata addresses
    # through the real gateway again (not 0.0.0.0: not on-link on either cloud).
    if (Test-MetadataRoutes) {
        return
    }
    $route = Get-DefaultRoute
    if ($null -eq $route) {
        throw 'no IPv4 default route: cannot route the metadata addresses'
    }
    foreach ($dest in @(Get-MetadataRouteGap)) {
        Get-NetRoute -DestinationPrefix ($dest + '/32') -AddressFamily IPv4 -ErrorAction SilentlyContinue | Remove-NetRoute -Confirm:$false -ErrorAction SilentlyContinue
        New-NetRoute -DestinationPrefix ($dest + '/32') -InterfaceIndex $route.ifIndex -NextHop $route.NextHop -RouteMetric 0 -PolicyStore ActiveStore | Out-Null
        Write-Log ('route {0}/32 via {1} on interface {2}' -f $dest, $route.NextHop, $route.ifIndex)
    }
}

function Get-MetadataTaskArguments {
    return ('-NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass -File "{0}" -Mode MetadataRoutes' -f $PSCommandPath)
}

function Test-MetadataRouteTask {
    if ($null -eq $P.metadataRoutes) {
        return $true
    }
    $task = Get-ScheduledTask -TaskName $P.metadataRoutes.taskName -ErrorAction SilentlyContinue
    return ($null -ne $task -and @($task.Actions | Where-Object { $_.Arguments -eq (Get-MetadataTaskArguments) }).Count -eq 1)
}

function Step-MetadataRouteTask {
    # The CNI creates its network after the join (a DaemonSet): re-assert the routes at every
    # start and every minute from a task.
    if (Test-MetadataRouteTask) {
        return
    }
    $r = $P.metadataRoutes
    $action = New-ScheduledTaskAction -Execute 'powershell.exe' -Argument (Get-MetadataTaskArguments)
    $atStart = New-ScheduledTaskTrigger -AtStartup
    $every = New-ScheduledTaskTrigger -Once -At (Get-Date) -RepetitionInterval (New-TimeSpan -Minutes ([int]$r.intervalMinutes))
    $principal = New-ScheduledTaskPrincipal -UserId 'SYSTEM' -LogonType ServiceAccount -RunLevel Highest
    $settings = New-ScheduledTaskSettingsSet -MultipleInstances IgnoreNew -ExecutionTimeLimit (New-TimeSpan -Minutes 5) -StartWhenAvailable
    Register-ScheduledTask -TaskName $r.taskName -Action $action -Trigger @($atStart, $every) -Principal $principal -Settings $settings -Force | Out-Null
}

# --------------------------------------------------------------------------------------------
# Join configuration and kubelet service

function Test-JoinTemplateSaved {
    # cloudbase-init rewrites the join configuration (with placeholders) when it runs the user
    # data again; keep the latest such copy to render from.
    return ((Test-Path -LiteralPath $JoinTemplate) -and -not (Read-JoinConfiguration).Contains('@@CAPWIN_'))
}

function Step-JoinTemplate {
    if (Test-JoinTemplateSaved) {
        return
    }
    Copy-Item -LiteralPath $JoinConfig -Destination $JoinTemplate -Force
}

function Test-JoinConfiguration {
    return ((Read-JoinConfiguration) -eq (Resolve-Placeholders (Read-JoinTemplate)))
}

function Step-JoinConfiguration {
    if (Test-JoinConfiguration) {
        return
    }
    [IO.File]::WriteAllText($JoinConfig, (Resolve-Placeholders (Read-JoinTemplate)), $Utf8)
}

function Get-KubeletImagePath {
    return (Get-CimInstance -ClassName Win32_Service -Filter "Name='kubelet'").PathName
}

function Get-KubeadmFlagArgs {
    # kubeadm writes KUBELET_KUBEADM_ARGS="--a=b --c=d"; values never contain spaces.
    if (-not (Test-Path -LiteralPath $KubeletFlagsEnv)) {
        return @()
    }
    $text = [IO.File]::ReadAllText($KubeletFlagsEnv, $Utf8).Trim()
    $text = ($text -replace '^KUBELET_KUBEADM_ARGS=', '').Trim('"')
    return @($text -split '\s+' | Where-Object { $_ -ne '' })
}

function Join-KubeletCommandLine {
    # The image's own command line, plus flags; later flags win in kubelet's parser.
    param([string]$Original, [string[]]$Flags)
    $extra = @($Flags | Where-Object { -not $Original.Contains(' ' + $_) })
    if ($extra.Count -eq 0) {
        return $Original
    }
    return ($Original + ' ' + ($extra -join ' '))
}

function Test-NativeKubeletService {
    # kubelet is its own Windows service (image-builder's sc.exe variant) and never reads
    # kubeadm-flags.env (kubernetes-sigs/image-builder#2011).
    return ([IO.File]::ReadAllText($KubeletOriginalPath, $Utf8) -match '--windows-service')
}

function Get-WantedKubeletImagePath {
    param([switch]$WithKubeadmFlags)
    $flags = @($P.kubeletFlags | ForEach-Object { Resolve-Placeholders $_ })
    if ($WithKubeadmFlags) {
        $flags += @(Get-KubeadmFlagArgs)
    }
    return (Join-KubeletCommandLine -Original ([IO.File]::ReadAllText($KubeletOriginalPath, $Utf8)) -Flags $flags)
}

function Set-KubeletImagePath {
    param([string]$PathName)
    $svc = Get-CimInstance -ClassName Win32_Service -Filter "Name='kubelet'"
    $result = Invoke-CimMethod -InputObject $svc -MethodName Change -Arguments @{ PathName = $PathName }
    if ($result.ReturnValue -ne 0) {
        throw ('changing the kubelet service command line failed with {0}' -f $result.ReturnValue)
    }
}

function Step-KubeletOriginalImagePath {
    if (Test-Path -LiteralPath $KubeletOriginalPath) {
        return
    }
    [IO.File]::WriteAllText($KubeletOriginalPath, (Get-KubeletImagePath), $Utf8)
}

function Test-KubeletServiceFlags {
    param([switch]$WithKubeadmFlags)
    if (-not (Test-NativeKubeletService)) {
        return $true
    }
    return ((Get-KubeletImagePath) -eq (Get-WantedKubeletImagePath -WithKubeadmFlags:$WithKubeadmFlags))
}

function Step-KubeletServiceFlags {
    # Give the native service the flags kubeadm will write, before the join, so the Node
    # registers with them (labels and taints only apply at registration).
    if (Test-KubeletServiceFlags) {
        return
    }
    Write-Log 'kubelet runs as a native service; adding the join flags to its command line'
    Set-KubeletImagePath (Get-WantedKubeletImagePath)
}

function Test-KubeletServiceConfig {
    $svc = Get-CimInstance -ClassName Win32_Service -Filter "Name='kubelet'"
    $deps = @((Get-Service -Name kubelet).ServicesDependedOn | ForEach-Object { $_.Name })
    return ($svc.StartMode -eq 'Auto' -and $deps -contains 'containerd')
}

function Step-KubeletServiceConfig {
    if (Test-KubeletServiceConfig) {
        return
    }
    Invoke-Native 'sc.exe' @('config', 'kubelet', 'depend=', 'containerd', 'start=', 'auto') | Out-Null
}

function Test-KubeletJoined {
    return ((Test-Path -LiteralPath $KubeletConf) -and (Test-ServiceRunning 'kubelet'))
}

function Step-KubeletStopped {
    # kubeadm starts kubelet itself during the join.
    if ((Test-KubeletJoined) -or -not (Test-ServiceRunning 'kubelet')) {
        return
    }
    Stop-Service -Name kubelet -Force
}

function Test-AdminKeys {
    $keys = @($P.adminAuthorizedKeys | Where-Object { $_ })
    if ($keys.Count -eq 0) {
        return $true
    }
    $path = 'C:\ProgramData\ssh\administrators_authorized_keys'
    if (-not (Test-Path -LiteralPath $path)) {
        return $false
    }
    $existing = [IO.File]::ReadAllText($path, $Utf8)
    return ((@($keys | Where-Object { -not $existing.Contains($_) }).Count -eq 0) -and (Test-PrivateAcl $path))
}

function Step-AdminKeys {
    # Windows OpenSSH reads administrators' keys from this file, which must be private.
    if (Test-AdminKeys) {
        return
    }
    $path = 'C:\ProgramData\ssh\administrators_authorized_keys'
    New-Item -ItemType Directory -Force -Path 'C:\ProgramData\ssh' | Out-Null
    $existing = ''
    if (Test-Path -LiteralPath $path) {
        $existing = [IO.File]::ReadAllText($path, $Utf8)
    }
    foreach ($key in @($P.adminAuthorizedKeys | Where-Object { $_ })) {
        if (-not $existing.Contains($key)) {
            [IO.File]::AppendAllText($path, ($key + "`r`n"), $Utf8)
        }
    }
    Set-PrivateAcl $path
}

# --------------------------------------------------------------------------------------------
# gMSA

function Assert-Gmsa {
    if (-not $P.gmsa.enabled) {
        return
    }
    if ($P.gmsa.requirePlugin) {
        if (@(Get-ChildItem -LiteralPath $CcgClasses -ErrorAction SilentlyContinue).Count -eq 0) {
            throw 'gMSA was requested but no Container Credential Guard plugin is registered (set windows.gmsa.ccgPlugin, or use an image that has one)'
        }
    } elseif (-not (Test-DomainMember $P.domainJoin.domain)) {
        throw ('gMSA through the domain membership was requested, but the node is not a member of {0}' -f $P.domainJoin.domain)
    }
}

# --------------------------------------------------------------------------------------------
# Join

function Step-PreKubeadmCommands {
    # Run before every join attempt until the node has joined; they must be safe to repeat.
    if (Test-KubeletJoined) {
        return
    }
    Invoke-UserCommands @($P.preKubeadmCommands) 'preKubeadmCommands'
}

function Assert-ApiServerReachable {
    $api = $P.apiServer
    Invoke-WithRetry -Attempts 60 -DelaySeconds 10 -What ('TCP connect to ' + $api.endpoint) -Action {
        $client = New-Object System.Net.Sockets.TcpClient
        try {
            $async = $client.BeginConnect($api.host, [int]$api.port, $null, $null)
            if (-not $async.AsyncWaitHandle.WaitOne(10000)) {
                throw 'connect timed out'
            }
            $client.EndConnect($async)
        } finally {
            $client.Close()
        }
    } | Out-Null
}

function Step-KubeadmJoin {
    if (Test-KubeletJoined) {
        Write-Log 'kubelet.conf exists and kubelet runs: joined earlier'
        return
    }
    $joinArgs = @('join', '--config', $JoinConfig, ('-v={0}' -f $P.verbosity))
    for ($attempt = 1; $attempt -le $P.joinAttempts; $attempt++) {
        try {
            Write-Log ('kubeadm join, attempt {0}/{1}' -f $attempt, $P.joinAttempts)
            Invoke-Native 'C:\k\kubeadm.exe' $joinArgs | Out-Null
            return
        } catch {
            if ($attempt -eq $P.joinAttempts) {
                throw
            }
            Write-Log ('kubeadm join failed: {0}; resetting before the next attempt' -f $_.Exception.Message)
            try {
                Invoke-Native 'C:\k\kubeadm.exe' @('reset', '--force') | Out-Null
            } catch {
                Write-Log ('kubeadm reset failed: ' + $_.Exception.Message)
            }
            Start-Sleep -Seconds ([Math]::Min(120, 15 * $attempt))
        }
    }
}

function Step-KubeletServiceFlagsAfterJoin {
    # kubeadm-flags.env is the authority after the join; bring the native service in line.
    if (Test-KubeletServiceFlags -WithKubeadmFlags) {
        return
    }
    Write-Log 'kubeadm wrote kubelet flags beyond the ones set before the join; restarting kubelet with them'
    Set-KubeletImagePath (Get-WantedKubeletImagePath -WithKubeadmFlags)
    Restart-Service -Name kubelet -Force
}

function Assert-KubeletRunning {
    Wait-Until -TimeoutSeconds 120 -What 'the kubelet service to run' -Condition { Test-ServiceRunning 'kubelet' }
}

function Test-DefenderExclusions {
    if ($null -eq (Get-Command -Name Add-MpPreference -ErrorAction SilentlyContinue)) {
        return $true
    }
    $pref = Get-MpPreference
    $processes = @($pref.ExclusionProcess)
    $paths = @($pref.ExclusionPath)
    $missing = @($P.defender.processes | Where-Object { $_ -and $processes -notcontains $_ }) + @($P.defender.paths | Where-Object { $_ -and $paths -notcontains $_ })
    return ($missing.Count -eq 0)
}

function Step-DefenderExclusions {
    if (Test-DefenderExclusions) {
        return
    }
    $processes = @($P.defender.processes | Where-Object { $_ })
    $paths = @($P.defender.paths | Where-Object { $_ })
    if ($processes.Count -gt 0) {
        Add-MpPreference -ExclusionProcess $processes
    }
    if ($paths.Count -gt 0) {
        Add-MpPreference -ExclusionPath $paths
    }
}

function Step-PostKubeadmCommands {
    if (Test-StateMarker 'postkubeadm' 'done') {
        return
    }
    Invoke-UserCommands @($P.postKubeadmCommands) 'postKubeadmCommands'
    Set-StateMarker 'postkubeadm' 'done'
}

function Step-Finish {
    if (Test-Joined) {
        return
    }
    # The join configuration holds the bootstrap token; it has done its job. So has kubeadm's
    # bootstrap kubeconfig (the same token), once kubelet.conf holds the node's own credential.
    Remove-Item -LiteralPath $JoinConfig, $JoinTemplate, $FailureFile -Force -ErrorAction SilentlyContinue
    if (Test-Path -LiteralPath 'C:\etc\kubernetes\kubelet.conf') {
        Remove-Item -LiteralPath 'C:\etc\kubernetes\bootstrap-kubelet.conf' -Force -ErrorAction SilentlyContinue
    }
    [IO.File]::WriteAllText($Sentinel, 'success', $Utf8)
}

# --------------------------------------------------------------------------------------------
# Main

function Invoke-Join {
    Enter-Step 'preamble'
    Read-Parameters
    $script:SerialPort = $P.serialPort
    Register-TokenRedaction
    $build = Get-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion'
    Write-Log ('capwin bootstrap {0}; Windows build {1}.{2}; cloud {3}; Kubernetes {4}; CNI {5}' -f $P.capwinVersion, $build.CurrentBuildNumber, $build.UBR, $P.cloud, $P.kubernetesVersion, $P.cni.flavour)

    Enter-Step 'acl'
    Step-PrivateAcl
    if (Test-Joined) {
        Write-Log 'already joined (sentinel present); nothing to do'
        Send-Progress 'succeeded' 'already joined'
        return
    }

    Enter-Step 'host'
    Assert-Elevated
    Assert-WindowsBuild
    Assert-WindowsFeature 'Containers' 'image-builder enables it (roles/systemprep)'
    Assert-ImageServices

    Enter-Step 'nodename'
    Assert-NodeName

    Enter-Step 'domain'
    # capwin:if domainJoin
    Step-DomainJoin
    # capwin:end

    Enter-Step 'binaries'
    Step-KubernetesBinaries

    Enter-Step 'version'
    Assert-KubeadmVersion

    Enter-Step 'containerd'
    # capwin:if containerdDownload
    Step-ContainerdRelease
    # capwin:end
    # capwin:if hyperV
    Assert-HyperVCapable
    # capwin:end
    Step-ContainerdImports
    Step-ContainerdDropIns
    # capwin:if hyperV
    Step-HyperVRuntime
    # capwin:end
    Step-ContainerdProxy
    Step-ServiceRecovery
    Step-ContainerdRunning
    Assert-ContainerdPipe

    Enter-Step 'network'
    Step-FirewallRules
    # capwin:if externalNetwork
    Step-ExternalNetwork
    # capwin:end
    Step-DynamicPortRange

    Enter-Step 'nodeip'
    Assert-NodeIP
    Step-JoinTemplate
    Step-JoinConfiguration

    Enter-Step 'routes'
    Step-MetadataRoutes
    Step-MetadataRouteTask

    Enter-Step 'kubelet'
    Step-KubeletOriginalImagePath
    Step-KubeletServiceFlags
    Step-KubeletServiceConfig
    Step-KubeletStopped

    Enter-Step 'users'
    Step-AdminKeys

    Enter-Step 'gmsa'
    # capwin:if ccgPlugin
    Step-CcgPlugin
    # capwin:end
    Assert-Gmsa

    Enter-Step 'prekubeadm'
    Step-PreKubeadmCommands

    Enter-Step 'apiserver'
    Assert-ApiServerReachable

    Enter-Step 'join'
    Step-KubeadmJoin

    Enter-Step 'postjoin'
    Step-KubeletServiceFlagsAfterJoin
    Assert-KubeletRunning
    Step-DefenderExclusions

    Enter-Step 'postkubeadm'
    Step-PostKubeadmCommands
    Step-Finish
    $script:CurrentStep = 'done'
    Write-Log 'joined'
    Send-Progress 'succeeded' ('node ' + $script:NodeName)
}

function Invoke-MetadataRoutes {
    # The scheduled task's run: quiet unless a route is missing.
    Read-Parameters
    if (Test-MetadataRoutes) {
        return
    }
    Start-Transcript -LiteralPath (Join-Path $LogDir 'metadata-routes.log') -Append | Out-Null
    try {
        Step-MetadataRoutes
    } finally {
        Stop-Transcript | Out-Null
    }
}

New-Item -ItemType Directory -Force -Path $LogDir, $ClusterApiDir, $RunDir, $StateDir | Out-Null
if ($Mode -eq 'MetadataRoutes') {
    $script:CurrentStep = 'routes'
    try {
        Invoke-MetadataRoutes
    } catch {
        Write-Log ('metadata routes: ' + $_.Exception.Message)
        $script:ExitCode = $Steps['routes']
    }
    exit $script:ExitCode
}
$script:LogFile = Join-Path $LogDir ('bootstrap-{0}.log' -f (Get-Date).ToUniversalTime().ToString('yyyyMMddTHHmmssZ'))
Start-Transcript -LiteralPath $script:LogFile -Append | Out-Null
try {
    Invoke-Join
} catch {
    $script:ExitCode = Complete-Failure $_
}
Stop-Transcript | Out-Null
exit $script:ExitCode
