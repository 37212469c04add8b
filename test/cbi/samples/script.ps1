#ps1_sysnative
Write-Host "capwin ps1 payload"
