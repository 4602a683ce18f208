from mtsae.cli import main

main()
